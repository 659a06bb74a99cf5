"""clip_benchmark integration: the SimZSS model type end to end on tiny local WebDatasets, the suite, the
results merger and bad-input errors. CPU only, offline, random-weight ``simzss-tiny``."""
import csv
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from open_clip_simzss.evaluation import clip_benchmark as cb
from open_clip_simzss.cli.clip_benchmark import main as cb_main

CLASSES = ["cat", "dog", "bus", "tree", "car"]
TEMPLATES = ["a photo of a {c}.", "a drawing of a {c}."]
N_IMAGES = 10


def _jpeg(rng) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((rng.random((24, 24, 3)) * 255).astype("uint8")).save(buf, "JPEG")
    return buf.getvalue()


def _write_shard(path, samples):
    """One tar shard; ``samples`` are {extension: bytes} dicts (WebDataset keys)."""
    with tarfile.open(path, "w") as tar:
        for i, sample in enumerate(samples):
            for ext, data in sample.items():
                info = tarfile.TarInfo(f"s{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def wds_root(tmp_path_factory):
    """``ROOT/wds_tiny_cls`` (classification) and ``ROOT/wds_tiny_ret`` (retrieval) in clip_benchmark's layout."""
    root = tmp_path_factory.mktemp("wds")
    rng = np.random.default_rng(0)
    cls_dir = root / "wds_tiny_cls"
    (cls_dir / "test").mkdir(parents=True)
    images = [_jpeg(rng) for _ in range(N_IMAGES)]
    _write_shard(cls_dir / "test" / "0.tar",
                 [{"jpg": img, "cls": str(i % len(CLASSES)).encode()} for i, img in enumerate(images)])
    (cls_dir / "test" / "nshards.txt").write_text("1\n")
    (cls_dir / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (cls_dir / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")

    # Retrieval: `txt` holds one caption per line; dataset_type.txt switches the loader (clip_benchmark builder).
    ret_dir = root / "wds_tiny_ret"
    (ret_dir / "test").mkdir(parents=True)
    _write_shard(ret_dir / "test" / "0.tar",
                 [{"jpg": _jpeg(rng), "txt": f"a photo number {i}\na picture number {i}".encode()} for i in range(6)])
    (ret_dir / "test" / "nshards.txt").write_text("1\n")
    (ret_dir / "dataset_type.txt").write_text("retrieval\n")
    return root, images


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import open_clip_simzss
    torch.manual_seed(1)
    model = open_clip_simzss.create_model("simzss-tiny")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def _eval(root, out, *extra):
    argv = ["eval", "--model", "simzss-tiny", "--dataset_root", f"{root}/wds_{{dataset}}", "--output", str(out),
            "--no_amp", "--num_workers", "0", "--batch_size", "4", "--quiet", *extra]
    assert cb_main(argv) == 0
    return json.loads(out.read_text())


def _one_line_error(capsys, rc, expected):
    err = capsys.readouterr().err.strip()
    assert rc == 2  # bad input
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and expected in err, err


# --- the model type ------------------------------------------------------------------------------------------
def test_register_adds_model_type_and_fixes_accuracy():
    cb.register()
    cb.register()  # idempotent
    import clip_benchmark.models as cb_models
    from clip_benchmark import cli
    from clip_benchmark.metrics import zeroshot_classification as zsc
    assert cb_models.TYPE2FUNC["simzss"] is cb.load_simzss
    assert cb_models.MODEL_TYPES.count("simzss") == 1
    assert cli.MODEL_TYPES is cb_models.MODEL_TYPES  # the list argparse uses as `choices`

    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    target = torch.tensor([1, 2, 2, 1])
    # top-1 hits: rows 0 and 2; top-2 adds row 3 (label 1 is its second best); row 1's label is ranked last.
    assert zsc.accuracy(logits, target, topk=(1, 2, 3)) == [0.5, 0.75, 1.0]
    if tuple(int(x) for x in np.__version__.split(".")[:2]) >= (2, 4):
        # The bug being fixed: float() of a 1-element array is a TypeError from NumPy 2.4 on.
        assert cb.original_accuracy is not None
        with pytest.raises(TypeError):
            cb.original_accuracy(logits, target, topk=(1,))


def test_eval_classification_matches_global_token_and_eos_features(wds_root, checkpoint, tmp_path, caplog):
    import open_clip_simzss
    root, images = wds_root
    with caplog.at_level("WARNING"):
        result = _eval(root, tmp_path / "cls.json", "--dataset", "wds/tiny_cls", "--pretrained", checkpoint)
    assert "RANDOM" not in caplog.text
    assert result["task"] == "zeroshot_classification" and result["dataset"] == "wds/tiny_cls"
    metrics = result["metrics"]
    for key in ("acc1", "acc5", "mean_per_class_recall"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["acc5"] == 1.0  # 5 classes: the label is always in the top 5

    # The same numbers by hand: global token vs. mean of normalised g(EOS) over the templates.
    model, _, preprocess = open_clip_simzss.create_model_and_transforms("simzss-tiny", pretrained=checkpoint)
    tokenizer = open_clip_simzss.get_tokenizer("simzss-tiny")
    with torch.no_grad():
        weights = torch.stack([model.encode_text(tokenizer([t.format(c=c) for t in TEMPLATES]), normalize=True)
                               .mean(0) for c in CLASSES])
        weights = torch.nn.functional.normalize(weights, dim=-1)
        pixels = torch.stack([preprocess(Image.open(io.BytesIO(img)).convert("RGB")) for img in images])
        pred = (model.encode_image(pixels, normalize=True) @ weights.T).argmax(1)
    labels = torch.arange(N_IMAGES) % len(CLASSES)
    assert metrics["acc1"] == pytest.approx((pred == labels).float().mean().item())


def test_eval_without_checkpoint_warns_random_weights(wds_root, tmp_path, caplog):
    root, _ = wds_root
    cb._LOADED.clear()
    with caplog.at_level("WARNING"):
        result = _eval(root, tmp_path / "cls.json", "--dataset", "wds/tiny_cls")  # no --pretrained
    assert "RANDOM weights" in caplog.text
    assert result["pretrained"] == "none" and 0.0 <= result["metrics"]["acc1"] <= 1.0


def test_eval_retrieval(wds_root, tmp_path):
    root, _ = wds_root
    result = _eval(root, tmp_path / "ret.json", "--dataset", "wds/tiny_ret", "--task", "zeroshot_retrieval",
                   "--recall_k", "1", "5")
    m = result["metrics"]
    for kind in ("image", "text"):
        assert 0.0 <= m[f"{kind}_retrieval_recall@1"] <= m[f"{kind}_retrieval_recall@5"] <= 1.0


# --- the suite -------------------------------------------------------------------------------------------------
def test_shipped_dataset_list():
    names = cb.read_dataset_list()
    assert len(names) == 38 == len(set(names))
    assert all(n.startswith("wds/") for n in names)
    for name in ("wds/imagenet1k", "wds/cars", "wds/fgvc_aircraft", "wds/vtab/flowers", "wds/objectnet",
                 "wds/voc2007_multilabel", "wds/vtab/svhn"):
        assert name in names
    assert not {"wds/mscoco_captions", "wds/flickr8k", "wds/flickr30k"} & set(names)  # retrieval is not in it


def test_suite_skips_missing_roots_and_writes_table(wds_root, tmp_path, capsys):
    root, _ = wds_root
    datasets = tmp_path / "datasets.txt"
    datasets.write_text("wds/tiny_cls\nwds/vtab/not_downloaded\n")
    out = tmp_path / "simzss"
    rc = cb_main(["suite", "--model", "simzss-tiny", "--dataset_root", f"{root}/wds_{{dataset_cleaned}}",
                  "--output_dir", str(out), "--datasets", str(datasets),
                  "--no_amp", "--num_workers", "0", "--quiet"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "1 evaluated, 1 skipped" in stdout and "wds_vtab-not_downloaded" in stdout
    summary = json.loads((out / "suite_summary.json").read_text())
    assert summary["done"] == ["wds/tiny_cls"] and summary["skipped"][0]["dataset"] == "wds/vtab/not_downloaded"
    acc1 = json.loads((out / "tiny_cls_en_zeroshot_classification.json").read_text())["metrics"]["acc1"]
    rows = list(csv.reader((out / "results.csv").open()))
    assert rows == [["dataset", "metric", "simzss"], ["tiny_cls", "acc1", f"{100 * acc1:.2f}"],
                    ["Average", "", f"{100 * acc1:.2f}"]]


# --- the merger ------------------------------------------------------------------------------------------------
def _result(folder, dataset, **metrics):
    folder.mkdir(exist_ok=True)
    path = folder / f"{dataset.replace('/', '_')}.json"
    path.write_text(json.dumps({"dataset": dataset, "model": "m", "pretrained": "p", "metrics": metrics}))
    return path


def test_merge_table_and_plot(tmp_path):
    a, b = tmp_path / "simzss", tmp_path / "lit"
    _result(a, "wds/imagenet1k", acc1=0.5, acc5=0.8)
    _result(a, "wds/vtab/flowers", acc1=0.7)
    _result(a, "wds/voc2007_multilabel", mean_average_precision=0.6)  # multi-label: mAP
    _result(a, "wds/flickr30k", **{"image_retrieval_recall@5": 0.9})  # retrieval: left out
    (a / "suite_summary.json").write_text("{}")                        # not a result: ignored in a folder
    _result(b, "wds/vtab/flowers", acc1=0.9)
    _result(b, "wds/imagenet1k", acc1=0.4)
    rc = cb_main(["merge", f"SimZSS={a}", f"LiT={b}", "--output", str(tmp_path / "t"), "--plot",
                  str(tmp_path / "fig.png")])
    assert rc == 0
    rows = list(csv.reader((tmp_path / "t.csv").open()))
    assert rows == [
        ["dataset", "metric", "SimZSS", "LiT", "SimZSS - LiT"],
        ["imagenet1k", "acc1", "50.00", "40.00", "10.00"],          # shipped-list order
        ["voc2007_multilabel", "mean_average_precision", "60.00", "", ""],
        ["vtab/flowers", "acc1", "70.00", "90.00", "-20.00"],
        ["Average", "", "60.00", "65.00", "-5.00"],                 # over the 2 datasets both runs have
    ]
    md = (tmp_path / "t.md").read_text().splitlines()
    assert md[0] == "| dataset | metric | SimZSS | LiT | SimZSS - LiT |"
    assert "| Average | – | 60.0 | 65.0 | -5.0 |" in md
    assert "Left out of the average (missing in some run): voc2007_multilabel." in md
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A merged CSV is accepted as a run (e.g. a LiT table from another machine).
    assert cb_main(["merge", f"SimZSS={a}", f"LiT={tmp_path / 't.csv'}", "--output", str(tmp_path / "t2")]) == 0
    assert list(csv.reader((tmp_path / "t2.csv").open()))[-1] == ["Average", "", "60.00", "65.00", "-5.00"]


# --- bad input --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, expected", [
    (["--model", "simzss-nope"], "unknown SimZSS model 'simzss-nope'"),
    (["--model", "simzss-tiny", "--pretrained", "/no/such/ckpt.pt"], "checkpoint not found: /no/such/ckpt.pt"),
    (["--model", "simzss-tiny", "--dataset", "wds/absent"], "dataset root not found"),
    (["--model", "simzss-tiny", "--dataset_root", "{nope}"], "bad --dataset_root template"),
])
def test_eval_bad_input(wds_root, capsys, extra, expected):
    root, _ = wds_root
    argv = ["eval", "--dataset", "wds/tiny_cls", "--dataset_root", f"{root}/wds_{{dataset}}", *extra]
    _one_line_error(capsys, cb_main(argv), expected)


def test_eval_root_without_shards(tmp_path, capsys):
    (tmp_path / "wds_x").mkdir()
    rc = cb_main(["eval", "--model", "simzss-tiny", "--dataset", "wds/x", "--dataset_root", f"{tmp_path}/wds_x"])
    _one_line_error(capsys, rc, "no test/nshards.txt")


def test_suite_bad_input(tmp_path, capsys):
    base = ["suite", "--model", "simzss-tiny", "--dataset_root", str(tmp_path), "--output_dir", str(tmp_path / "o")]
    _one_line_error(capsys, cb_main(base + ["--datasets", str(tmp_path / "none.txt")]), "cannot read dataset list")
    _one_line_error(capsys, cb_main(base + ["--dataset", "wds/cars"]), "--dataset cannot be passed to the suite")
    # Every root missing: nothing evaluated is a failure of the suite, reported per dataset, not a crash.
    (tmp_path / "list.txt").write_text("wds/cars\n")
    assert cb_main(base + ["--datasets", str(tmp_path / "list.txt")]) == 1
    assert "0 evaluated, 1 skipped" in capsys.readouterr().out


def test_merge_bad_input(tmp_path, capsys):
    out = ["--output", str(tmp_path / "t")]
    _one_line_error(capsys, cb_main(["merge", f"A={tmp_path / 'missing'}", *out]), "results not found")
    (tmp_path / "x.json").write_text('{"hello": 1}')
    _one_line_error(capsys, cb_main(["merge", f"A={tmp_path / 'x.json'}", *out]), "is not a clip_benchmark result")
    (tmp_path / "y.json").write_text("{not json")
    _one_line_error(capsys, cb_main(["merge", f"A={tmp_path / 'y.json'}", *out]), "cannot read results file")
    run = tmp_path / "run"
    _result(run, "wds/cars", acc1=0.1)
    (run / "again.json").write_text(json.dumps({"dataset": "cars", "metrics": {"acc1": 0.2}}))
    _one_line_error(capsys, cb_main(["merge", f"A={run}", *out]), "two results for cars")
    _one_line_error(capsys, cb_main(["merge", f"={run}", *out]), "expected LABEL=PATH")
    assert cb_main([]) == 2 and cb_main(["frobnicate"]) == 2


@pytest.mark.slow
def test_module_entry_point_exit_status(tmp_path):
    """The real ``python -m`` entry: non-zero exit and a single line on stderr, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "open_clip_simzss", "clip-benchmark", "merge", f"A={tmp_path}/nope",
                           "--output", str(tmp_path / "t")], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: results not found: {tmp_path}/nope"]
