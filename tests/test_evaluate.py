"""The evaluation CLI end to end with simzss-tiny on tiny benchmark fixtures (small images, small windows)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from open_clip_simzss.cli import evaluate
from open_clip_simzss.datasets import get_dataset
from open_clip_simzss.metrics import IoUAccumulator, ThresholdSweep
from open_clip_simzss.segmentation import ZeroShotSegmenter

from test_datasets import write_benchmarks

FAST = ["--short-side", "32", "--window", "32", "--stride", "16", "--templates", "photo1", "--device", "cpu"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_benchmarks(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import open_clip_simzss
    torch.manual_seed(123)
    model = open_clip_simzss.create_model("simzss-tiny")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_cli_matches_the_library_and_sweeps_thresholds(data_root, checkpoint, tmp_path, capsys, tokenizer):
    path, model = checkpoint
    out = tmp_path / "res" / "results.json"
    rc = evaluate.main(["--model", "simzss-tiny", "--checkpoint", str(path), "--dataset", "voc20,voc21",
                        "--data-root", str(data_root), "--background-sweep", "0.3:0.7:0.1",
                        "--output", str(out), *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "random weights" not in captured.err
    report = json.loads(out.read_text())
    assert report["random_weights"] is False and report["protocol"]["window"] == 32
    voc20, voc21 = report["datasets"]["voc20"], report["datasets"]["voc21"]
    assert voc20["num_images"] == 2 and voc20["background"] is None and len(voc20["per_class"]) == 20
    assert [r["threshold"] for r in voc21["background"]["sweep"]] == [0.3, 0.4, 0.5, 0.6, 0.7]
    assert list(voc21["per_class"])[0] == "background" and len(voc21["per_class"]) == 21
    assert "tv monitor" in captured.out and "<- best" in captured.out

    # The same numbers from the library: segmenter + accumulators, on the model the checkpoint holds.
    kw = dict(templates="photo1", short_side=32, window=32, stride=16)
    ds20, ds21 = get_dataset("voc20", data_root), get_dataset("voc21", data_root)
    seg = ZeroShotSegmenter(model, tokenizer, ds20.class_names, **kw)
    acc, sweep = IoUAccumulator(20), ThresholdSweep(21, [0.3, 0.4, 0.5, 0.6, 0.7])
    for i in range(2):
        fg, conf = seg.predict_foreground(ds20.load_image(i))
        acc.update(fg, ds20.load_label(i))
        sweep.update(fg, conf, ds21.load_label(i))
    assert voc20["miou"] == round(acc.miou(), 2)
    assert [r["miou"] for r in voc21["background"]["sweep"]] == [round(m, 2) for m in sweep.mious()]
    assert voc21["background"]["threshold"] == sweep.thresholds[sweep.best()]


def test_cli_all_prints_the_paper_row(data_root, tmp_path, capsys):
    out = tmp_path / "all.json"
    rc = evaluate.main(["--model", "simzss-tiny", "--dataset", "all", "--data-root", str(data_root), "--limit", "1",
                        "--background-threshold", "0.5", "--background-score", "softmax", "--quiet",
                        "--output", str(out), *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "warning: no --checkpoint" in captured.err
    header = "| VOC20 | Context59 | COCO-Stuff | Cityscapes | ADE20K | ‖ | Context60 | COCO-Object | VOC21 |"
    assert header in captured.out
    report = json.loads(out.read_text())
    assert report["row"]["columns"] == ["voc20", "context59", "coco_stuff", "cityscapes", "ade20k", "context60",
                                        "coco_object", "voc21"]
    assert all(r["num_images"] == 1 for r in report["datasets"].values())
    bg = report["datasets"]["coco_object"]["background"]
    assert bg == {"score": "softmax", "scale": 40.0, "threshold": 0.5, "sweep": [bg["sweep"][0]]}
    lines = captured.out.splitlines()
    row = lines[lines.index(header) + 1]
    assert row.count("|") == 10 and all(0 <= m <= 100 for m in report["row"]["miou"])


@pytest.mark.parametrize("args, message", [
    (["--dataset", "voc20", "--data-root", "/nonexistent/data"], "data root /nonexistent/data does not exist"),
    (["--dataset", "voc22", "--data-root", "."], "unknown dataset voc22"),
    (["--dataset", "voc21", "--data-root", "DATA", "--background-sweep", "0.9:0.1:0.1"], "bad threshold sweep"),
    (["--dataset", "voc21", "--data-root", "DATA", "--checkpoint", "/no/such.pt"], "checkpoint not found: /no/such.pt"),
    (["--dataset", "voc21", "--data-root", "DATA", "--background-sweep", "0.1:0.2:0.1",
      "--background-threshold", "0.3"], "not allowed with argument"),
    (["--dataset", "cityscapes", "--data-root", "DATA"], "expected image folder"),
    (["--data-root", "DATA"], "required: --dataset"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    data = tmp_path / "empty"
    data.mkdir()
    rc = evaluate.main([a.replace("DATA", str(data)) for a in args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert "Traceback" not in err


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "open_clip_simzss.evaluate", "--dataset", "voc20", "--data-root",
                           str(tmp_path), "--model", "simzss-tiny"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "expected image folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_local_dir_model_brings_its_own_weights(data_root, checkpoint, tmp_path, capsys):
    import open_clip
    path, model = checkpoint
    folder = tmp_path / "tiny-local"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": open_clip.get_model_config("simzss-tiny"),
        "preprocess_cfg": dict(open_clip.get_model_preprocess_cfg(model)),
    }))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    out = tmp_path / "local.json"
    rc = evaluate.main(["--model", f"local-dir:{folder}", "--dataset", "voc20", "--data-root", str(data_root),
                        "--limit", "1", "--quiet", "--output", str(out), *FAST])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "random weights" not in err
    assert json.loads(out.read_text())["random_weights"] is False
