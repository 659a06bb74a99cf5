"""The demo's --quick mode end to end: data, spaCy concepts, SimZSS and LiT training, evaluation, report."""
import json

from open_clip_simzss.cli.demo import main


def test_quick_demo_writes_every_report_file(tmp_path, capsys):
    assert main(["--quick", "--output", str(tmp_path)]) == 0
    report = tmp_path / "report"
    for name in ("report.md", "results.json", "overlays.png", "loss_curves.png", "pca.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    results = json.loads((report / "results.json").read_text())
    chance = results["chance"]
    assert 0 < chance < 10
    # loose, honest bounds for a one-epoch run: every run clearly above chance
    for method in ("SimZSS", "LiT"):
        assert all(m > 2 * chance for m in results["miou"][method]), results["miou"]
    assert "| mean ± std |" in (report / "report.md").read_text()
    assert "report.md" in capsys.readouterr().out
