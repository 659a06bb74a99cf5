"""The demo and every study in --quick mode, in one shared output folder (runs are reused between them), and
the statistics the study reports are built from."""
import json
import math

import pytest

from open_clip_simzss.cli.demo import main
from open_clip_simzss.workflows.studies import STUDIES, paired_difference, t_quantile, verdict

pytestmark = pytest.mark.slow  # processes, training or installs (make test-fast leaves it out)


@pytest.fixture(scope="module")
def bench(quick_demo):
    """The session's quick demo (tests/conftest.py), rerun here (its runs are reused), then every study on it."""
    assert main(["--quick", "--output", str(quick_demo)]) == 0
    assert main(["--quick", "--study", *STUDIES, "--output", str(quick_demo)]) == 0
    return quick_demo


def test_quick_demo_writes_every_report_file(bench):
    report = bench / "report"
    for name in ("report.md", "results.json", "overlays.png", "loss_curves.png", "pca.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    results = json.loads((report / "results.json").read_text())
    chance = results["chance"]
    assert 0 < chance < 10
    # loose, honest bounds for a one-epoch run: every run clearly above chance
    for method in ("SimZSS", "LiT"):
        assert all(m > 2 * chance for m in results["miou"][method]), results["miou"]
    assert "| mean ± std |" in (report / "report.md").read_text()


@pytest.mark.parametrize("name", list(STUDIES))
def test_every_study_writes_its_report(bench, name):
    folder = bench / "studies" / name
    for file in ("report.md", "results.json", f"{name}.png"):
        assert (folder / file).is_file() and (folder / file).stat().st_size > 0, file
    results = json.loads((folder / "results.json").read_text())
    assert results["study"] == name and results["seeds"] == [0]
    assert [row["label"] for row in results["settings"]] == list(STUDIES[name].quick)
    report = (folder / "report.md").read_text()
    for row in results["settings"]:
        miou = row["per_seed"]["miou"][0]
        assert 0 < miou <= 100
        assert f"| {row['label']} | {miou:.2f} ± 0.00 |" in report  # the table shows the JSON's numbers
        objects, stuff = row["stats"]["objects"]["mean"], row["stats"]["stuff"]["mean"]
        assert min(objects, stuff) <= miou <= max(objects, stuff)  # mIoU is their class-weighted mean
    assert "## The paper's trend and what this bench measured" in report
    assert "one seed: no interval" in report


def run_of(bench, study, label):
    row = next(r for r in json.loads((bench / "studies" / study / "results.json").read_text())["settings"]
               if r["label"] == label)
    return row["runs"], row["per_seed"]


def test_lambda_zero_is_the_lit_run(bench):
    assert run_of(bench, "lambda", "λ = 0") == run_of(bench, "variants", "LiT")
    assert run_of(bench, "lambda", "λ = 0.05") == run_of(bench, "variants", "SimZSS (paper)")
    # the demo's two runs are these: trained once
    runs = sorted(p.name for p in (bench / "runs").iterdir() if p.is_dir())
    assert runs == sorted(["lam0-tau0.1-paper-bankdemo-seed0", "lam0.05-tau0.1-paper-bankdemo-seed0",
                           "lam0.05-tau0.1-release-bankdemo-seed0", "lam0.05-tau0.4-paper-bankdemo-seed0",
                           "lam0.05-tau0.1-paper-banknone-seed0"])
    demo_results = json.loads((bench / "report" / "results.json").read_text())
    assert run_of(bench, "lambda", "λ = 0")[1]["miou"] == demo_results["miou"]["LiT"]


def test_training_flags_reach_the_trainer(bench):
    params = (bench / "runs" / "lam0.05-tau0.4-paper-bankdemo-seed0" / "params.txt").read_text()
    assert "concept_tau: 0.4" in params
    params = (bench / "runs" / "lam0.05-tau0.1-release-bankdemo-seed0" / "params.txt").read_text()
    assert "simzss_variant: release" in params
    params = (bench / "runs" / "lam0.05-tau0.1-paper-banknone-seed0" / "params.txt").read_text()
    assert "concept_bank: none" in params


def test_fewshot_ceiling_depends_on_the_frozen_tower_only(bench):
    """The vision tower is frozen and shared by every run: SimZSS and LiT get the same few-shot classifier."""
    assert run_of(bench, "fewshot", "SimZSS few-shot")[1] == run_of(bench, "fewshot", "LiT few-shot")[1]
    assert run_of(bench, "fewshot", "SimZSS text")[1] != run_of(bench, "fewshot", "LiT text")[1]


def test_fewshot_key_names_the_vision_weights_and_ignores_the_text_tower():
    """Runs share a few-shot classifier when the feature cache's tower digest is equal (studies.Bench)."""
    torch = pytest.importorskip("torch")
    import open_clip_simzss
    from open_clip_simzss.weights.identity import tower_fingerprint

    def key(model):
        return tower_fingerprint(model, {}, "float32")

    torch.manual_seed(0)
    a = open_clip_simzss.create_model("simzss-tiny")
    b = open_clip_simzss.create_model("simzss-tiny")
    b.load_state_dict(a.state_dict())
    assert key(a) == key(b)
    with torch.no_grad():
        b.text.token_embedding.weight += 1  # the text tower is what runs train: the shared few-shot rows ignore it
    assert key(a) == key(b)
    with torch.no_grad():
        next(b.visual.parameters()).view(-1)[0] += 1e-3
    assert key(a) != key(b)


def test_a_rerun_evaluates_to_the_same_numbers(bench, capsys):
    before = (bench / "studies" / "tau" / "results.json").read_text()
    for path in (bench / "evals").glob("lam0.05-tau0.4-*.json"):
        path.unlink()  # evaluated again from the checkpoint
    assert main(["--quick", "--study", "tau", "--output", str(bench)]) == 0
    after = (bench / "studies" / "tau" / "results.json").read_text()
    drop = lambda text: {k: v for k, v in json.loads(text).items() if k != "seconds"}  # noqa: E731
    assert drop(after) == drop(before)
    assert "report: " in capsys.readouterr().out


def test_a_folder_of_another_bench_is_refused_in_one_line(bench, capsys):
    assert main(["--study", "lambda", "--output", str(bench)]) == 2  # full config in a --quick folder
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "another configuration" in err and "\n" not in err


# --- statistics ---------------------------------------------------------------------------------------------
def test_paired_difference_by_hand():
    d = paired_difference([60.0, 55.0, 63.0], [52.0, 53.0, 59.0])  # differences 8, 2, 4
    assert d["mean"] == pytest.approx(14 / 3)
    sd = math.sqrt(((8 - 14 / 3) ** 2 + (2 - 14 / 3) ** 2 + (4 - 14 / 3) ** 2) / 2)
    assert d["std"] == pytest.approx(sd)
    half = 4.303 * sd / math.sqrt(3)
    assert d["ci"] == pytest.approx([14 / 3 - half, 14 / 3 + half])
    assert paired_difference([1.0], [0.5])["ci"] is None


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 40):
        assert t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df) if df <= 30 else 1.96, abs=6e-4)
    with pytest.raises(ValueError):
        t_quantile(0)


@pytest.mark.parametrize("ci, sign, expected", [
    ([0.5, 2.0], 1, "agrees"), ([0.5, 2.0], -1, "disagrees"), ([-2.0, -0.5], -1, "agrees"),
    ([-1.0, 2.0], 1, "not separated (the interval contains 0)"), (None, 1, "one seed: no interval"),
])
def test_verdict(ci, sign, expected):
    assert verdict({"mean": 0.0, "ci": ci}, sign) == expected

