"""The evaluation CLI end to end with simzss-tiny on tiny benchmark fixtures (small images, small windows)."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from open_clip_simzss.cli import evaluate
from open_clip_simzss.evaluation.datasets import get_dataset
from open_clip_simzss.evaluation.metrics import IoUAccumulator, ThresholdSweep
from open_clip_simzss.segmentation.classifier import build_text_classifier
from open_clip_simzss.segmentation.engine import SlidingWindowEngine
from open_clip_simzss.segmentation.protocol import SegmentationProtocol


FAST = ["--short-side", "32", "--window", "32", "--stride", "16", "--templates", "photo1", "--device", "cpu"]


@pytest.fixture(scope="module")
def data_root(benchmark_root):
    return benchmark_root


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def library_segmenter(model, tokenizer, class_names, **options):
    """(engine, text classifier) with the FAST flags' protocol."""
    protocol = SegmentationProtocol.of(templates="photo1", short_side=32, window=32, stride=16, **options)
    return SlidingWindowEngine(model, protocol), build_text_classifier(model, tokenizer, class_names, "photo1")


def _sweep_library(seg, dataset, indices, thresholds):
    engine, classifier = seg
    sweep = ThresholdSweep(dataset.num_classes, thresholds)
    for i in indices:
        fg, conf = engine.classes_and_confidence(dataset.load_image(i), classifier)
        sweep.update(fg, conf, dataset.load_label(i))
    return sweep


def test_cli_matches_the_library_and_sweeps_a_cosine_grid(data_root, checkpoint, tmp_path, capsys, tokenizer):
    path, model = checkpoint
    out = tmp_path / "res" / "results.json"
    rc = evaluate.main(["--model", "simzss-tiny", "--checkpoint", str(path), "--dataset", "voc20,voc21",
                        "--data-root", str(data_root), "--background-sweep=-0.2:0.2:0.1",
                        "--output", str(out), *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "random weights" not in captured.err
    report = json.loads(out.read_text())
    assert report["random_weights"] is False and report["protocol"]["window"] == 32
    assert report["protocol"]["class_names"] == "mmseg" and report["precision"] == "fp32"
    voc20, voc21 = report["datasets"]["voc20"], report["datasets"]["voc21"]
    assert voc20["num_images"] == 2 and voc20["background"] is None and len(voc20["per_class"]) == 20
    assert voc20["class_names"] == "mmseg" and "tvmonitor" in voc20["per_class"]
    bg = voc21["background"]
    cosines = [-0.2, -0.1, 0.0, 0.1, 0.2]
    assert [r["cosine"] for r in bg["sweep"]] == cosines
    # cosine c on the sigmoid confidence is the threshold sigmoid(c): background where max cosine < c
    assert [r["threshold"] for r in bg["sweep"]] == pytest.approx([1 / (1 + math.exp(-c)) for c in cosines])
    assert list(voc21["per_class"])[0] == "background" and len(voc21["per_class"]) == 21
    assert bg["selected_on"] == "test split (val, the reported images)" and bg["source"] == "sweep"
    assert "class names mmseg" in captured.out and "selected on the test split" in captured.out
    assert "tvmonitor" in captured.out and "<- selected" in captured.out

    # The same numbers from the library: engine + classifier + accumulators, on the model the checkpoint holds.
    ds20, ds21 = get_dataset("voc20", data_root), get_dataset("voc21", data_root)
    seg = library_segmenter(model, tokenizer, ds20.class_names)
    acc = IoUAccumulator(20)
    for i in range(2):
        acc.update(seg[0].classes_and_confidence(ds20.load_image(i), seg[1])[0], ds20.load_label(i))
    sweep = _sweep_library(seg, ds21, range(2), [r["threshold"] for r in bg["sweep"]])
    assert voc20["miou"] == round(acc.miou(), 2)
    assert [r["miou"] for r in bg["sweep"]] == [round(m, 2) for m in sweep.mious()]
    assert bg["threshold"] == sweep.thresholds[sweep.best()] and voc21["miou"] == bg["sweep"][sweep.best()]["miou"]
    # ... and each grid point equals a full re-run of the segmenter at that threshold
    for row in bg["sweep"]:
        engine, classifier = library_segmenter(model, tokenizer, ds21.class_names,
                                               background_threshold=row["threshold"])
        single = IoUAccumulator(21)
        for i in range(2):
            single.update(engine.predict(ds21.load_image(i), classifier), ds21.load_label(i))
        assert row["miou"] == round(single.miou(), 2)


@pytest.mark.parametrize("sweep_on", ["train:2", "val:1"])
def test_sweep_on_selects_away_from_the_reported_images(data_root, checkpoint, tmp_path, capsys, tokenizer,
                                                        sweep_on):
    path, model = checkpoint
    out = tmp_path / "sel.json"
    rc = evaluate.main(["--model", "simzss-tiny", "--checkpoint", str(path), "--dataset", "voc21", "--data-root",
                        str(data_root), "--background-sweep=-0.1:0.1:0.05", "--sweep-on", sweep_on, "--quiet",
                        "--output", str(out), *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(out.read_text())["datasets"]["voc21"]
    bg = result["background"]
    thresholds = [r["threshold"] for r in bg["sweep"]]
    seg = library_segmenter(model, tokenizer, get_dataset("voc21", data_root).class_names)
    val = get_dataset("voc21", data_root)
    if sweep_on == "train:2":  # the first 2 images of ImageSets/Segmentation/train.txt; all val images reported
        selection = _sweep_library(seg, get_dataset("voc21", data_root, split="train"), range(2), thresholds)
        test = _sweep_library(seg, val, range(2), thresholds)
        assert bg["selected_on"] == "train[:2]" and result["num_images"] == 2 and result["first_image"] == 0
    else:  # the first val image selects, the rest is reported
        selection = _sweep_library(seg, val, range(1), thresholds)
        test = _sweep_library(seg, val, range(1, 2), thresholds)
        assert bg["selected_on"] == "val[:1] (held out of the reported images)"
        assert result["num_images"] == 1 and result["first_image"] == 1
    assert "test split" not in captured.out and f"selected on the {bg['selected_on']}" in captured.out
    assert [r["selection_miou"] for r in bg["sweep"]] == [round(m, 2) for m in selection.mious()]
    assert [r["miou"] for r in bg["sweep"]] == [round(m, 2) for m in test.mious()]
    assert bg["threshold"] == thresholds[selection.best()]
    assert result["miou"] == round(test.mious()[selection.best()], 2)


def test_default_class_names_reach_the_tokenizer(data_root, monkeypatch, capsys, tokenizer):
    prompts = []
    real_load = evaluate.common.load

    def recording_load(args, device, precision=None):
        model, tok = real_load(args, device, precision)
        return model, lambda texts: prompts.extend(texts) or tok(texts)

    monkeypatch.setattr(evaluate.common, "load", recording_load)
    mmseg = ("a photo of a diningtable.", "a photo of a tvmonitor.", "a photo of a pottedplant.",
             "a photo of a aeroplane.")
    for class_set, expected, absent in [
            ("mmseg", mmseg, ("a photo of a dining table.", "a photo of a television.")),
            ("readable", ("a photo of a dining table.", "a photo of a tv monitor."), ("a photo of a television.",)),
            ("synonyms", ("a photo of a television.", "a photo of a airplane."), ("a photo of a tvmonitor.",))]:
        prompts.clear()
        args = ["--class-names", class_set] if class_set != "mmseg" else []  # mmseg: the default
        rc = evaluate.main(["--model", "simzss-tiny", "--dataset", "voc20", "--data-root", str(data_root),
                            "--limit", "1", "--quiet", *args, *FAST])
        assert rc == 0, capsys.readouterr().err
        assert set(expected) <= set(prompts) and not set(absent) & set(prompts), class_set
        assert f"class names {class_set}" in capsys.readouterr().out


def test_cli_all_prints_the_paper_row(data_root, tmp_path, capsys):
    out = tmp_path / "all.json"
    rc = evaluate.main(["--model", "simzss-tiny", "--dataset", "all", "--data-root", str(data_root), "--limit", "1",
                        "--background-threshold", "0.5", "--background-score", "softmax", "--quiet",
                        "--precision", "amp_bf16", "--output", str(out), *FAST])
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
    assert bg == {"score": "softmax", "scale": 40.0, "threshold": 0.5, "cosine": None, "selected_on": None,
                  "source": "--background-threshold", "sweep": [bg["sweep"][0]]}
    assert report["precision"] == "amp_bf16"
    lines = captured.out.splitlines()
    row = lines[lines.index(header) + 1]
    assert row.count("|") == 10 and all(0 <= m <= 100 for m in report["row"]["miou"])


@pytest.mark.parametrize("score, expected", [("sigmoid", {"voc21": 0.55, "context60": 0.55, "coco_object": 0.55}),
                                             ("softmax", {"voc21": 0.2, "context60": 0.15, "coco_object": 0.25})])
def test_background_threshold_defaults_per_dataset(data_root, tmp_path, capsys, score, expected):
    out = tmp_path / "defaults.json"
    rc = evaluate.main(["--model", "simzss-tiny", "--dataset", "voc21,context60,coco_object", "--data-root",
                        str(data_root), "--limit", "1", "--quiet", "--background-score", score, "--output", str(out),
                        *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "not calibrated for SimZSS" in captured.err
    datasets = json.loads(out.read_text())["datasets"]
    assert {n: r["background"]["threshold"] for n, r in datasets.items()} == expected
    assert all(r["background"]["source"] == "per-dataset default, not calibrated for SimZSS"
               and r["background"]["selected_on"] is None for r in datasets.values())
    assert "(per-dataset default, not calibrated for SimZSS)" in captured.out


@pytest.mark.parametrize("args, message", [
    (["--dataset", "voc21", "--data-root", "DATA", "--background-sweep", "0.5:1.5:0.5"], "in cosine units"),
    (["--dataset", "voc21", "--data-root", "DATA", "--background-sweep", "0.5:1.5:0.5", "--background-score",
      "softmax"], "probability units"),
    (["--dataset", "voc21", "--data-root", "DATA", "--sweep-on", "train:5"], "--sweep-on needs --background-sweep"),
    (["--dataset", "voc21", "--data-root", "DATA", "--background-sweep", "0:0.2:0.1", "--sweep-on", "test:5"],
     "bad --sweep-on 'test:5'"),
    (["--dataset", "voc21", "--data-root", "DATA", "--class-names", "fancy"], "not one of mmseg, readable, synonyms"),
    (["--dataset", "voc21", "--data-root", "DATA", "--precision", "bf16"], "invalid choice: 'bf16'"),
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


@pytest.mark.slow
def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "open_clip_simzss", "evaluate", "--dataset", "voc20", "--data-root",
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


def test_sweep_on_val_must_leave_images_to_report(data_root, capsys):
    rc = evaluate.main(["--model", "simzss-tiny", "--dataset", "voc21", "--data-root", str(data_root),
                        "--background-sweep", "0:0.2:0.1", "--sweep-on", "val:2", "--quiet", *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "voc21: selecting on 2 of its 2 images leaves none to evaluate" in err
    assert "Traceback" not in err and err.count("\n") == 2  # the random-weights warning, then the error


@pytest.mark.parametrize("fewshot", ["train:2", "val:1"])
def test_fewshot_from_replaces_the_text_rows(data_root, checkpoint, tmp_path, capsys, tokenizer, fewshot):
    """--fewshot-from (the Table 8 diagnostic): the rows are the class means of the given images' dense tokens;
    val:N holds those images out of the reported mIoU. Background (voc21) is not a class row: its pixels are
    left out of the means."""
    from open_clip_simzss.segmentation.fewshot import fewshot_classifier
    path, model = checkpoint
    out = tmp_path / "fewshot.json"
    rc = evaluate.main(["--model", "simzss-tiny", "--checkpoint", str(path), "--dataset", "voc21", "--data-root",
                        str(data_root), "--background-threshold", "0.5", "--fewshot-from", fewshot, "--quiet",
                        "--output", str(out), *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(out.read_text())["datasets"]["voc21"]
    split, n = fewshot.split(":")
    assert result["classifier"].startswith(f"few-shot from {split}[:{n}]") and "few-shot" in captured.out
    source = get_dataset("voc21", data_root, split=split)
    engine, text = library_segmenter(model, tokenizer, source.class_names, background_threshold=0.5)
    pairs = [(img, np.where((lbl == 0) | (lbl == 255), 255, lbl - 1)) for img, lbl in
             (source[i] for i in range(int(n)))]
    classifier = fewshot_classifier(engine, pairs, 20, fallback=lambda: text)
    first = int(n) if split == "val" else 0
    val = get_dataset("voc21", data_root)
    acc = IoUAccumulator(21)
    for i in range(first, len(val)):
        acc.update(engine.predict(val.load_image(i), classifier), val.load_label(i))
    assert result["first_image"] == first and result["num_images"] == len(val) - first
    assert result["miou"] == round(acc.miou(), 2)


def test_fewshot_and_selection_cannot_both_hold_out(data_root, capsys):
    rc = evaluate.main(["--dataset", "voc21", "--data-root", str(data_root), "--background-sweep", "0:0.2:0.1",
                        "--sweep-on", "val:1", "--fewshot-from", "val:1", *FAST])
    assert rc == 2 and "both hold out" in capsys.readouterr().err
