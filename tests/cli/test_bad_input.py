"""Every command against a table of bad input and faults (README "Segment any image", "Training"): each row is a
command line, the exit status it must end with (2 bad input, 1 a failure while working) and a part of its one
``error:`` line. Every row must also leave at most 2 lines on stderr (a warning may precede the error), no
traceback, and no new file anywhere: not where ``--output`` pointed, not a temporary one.

Commands run in-process through their ``main(argv)`` (a subprocess would import torch again for each row).
Models are simzss-tiny with random weights; "another model" is a simzss-tiny with a narrower, shallower text tower.
Faults: ``enospc`` makes every fsync fail as a full disk does (the error surfaces at the latest at fsync), so
that a result is half written when the error comes.
"""
import errno
import importlib
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.shards import write_shards
from tests.helpers.benchmarks import write_voc

COMMANDS = {"segment": "open_clip_simzss.cli.segment", "visualize": "open_clip_simzss.cli.visualize",
            "evaluate": "open_clip_simzss.cli.evaluate", "preprocess": "open_clip_simzss.cli.preprocess",
            "checkpoint": "open_clip_simzss.cli.checkpoint", "clip-benchmark": "open_clip_simzss.cli.clip_benchmark",
            "demo": "open_clip_simzss.cli.demo", "app": "open_clip_simzss.cli.app", "training": "training.main"}

FAST = ["--short-side", "32", "--window", "32", "--stride", "16", "--templates", "photo1"]
SEGMENT = ["--image", "{image}", "--labels", "cat, sky", "--checkpoint", "{model}", "--output", "{out}",
           "--quiet", *FAST]
VISUALIZE = ["--image", "{image}", "--checkpoint", "{model}", "--output", "{out}", "--scales", "1",
             "--base-size", "32", "--quiet"]
EVALUATE = ["--dataset", "voc20", "--data-root", "{voc}", "--model", "simzss-tiny", "--device", "cpu",
            "--quiet", *FAST]
PREPROCESS = ["--input", "{shards}", "--output", "{out}", "--workers", "1"]
EXPORT = ["export", "--checkpoint", "{ckpt}", "--model", "simzss-tiny", "--output", "{out}"]
CB_EVAL = ["eval", "--model", "simzss-tiny", "--dataset", "cifar10", "--dataset_root", "{missing}",
           "--output", "{out}/result.json"]
TRAIN = ["--model", "simzss-tiny", "--train-data", "{shards}", "--train-num-samples", "4", "--batch-size", "2",
         "--workers", "0", "--lambda-concept", "0", "--logs", "{out}/logs", "--precision", "fp32"]
WIDTH = "text.positional_embedding is [77, 64] in the checkpoint but [77, 128] in the model"
RANGE = "must be a finite number >= 0 and <= 1, got"

# (id, command, argv, exit status, a part of the error line, fault)
ROWS = [
    # simzss-segment
    ("segment: --background-threshold nan", "segment", SEGMENT + ["--background-threshold", "nan"], 2,
     f"--background-threshold {RANGE} nan", None),
    ("segment: --background-threshold inf", "segment", SEGMENT + ["--background-threshold", "inf"], 2,
     f"--background-threshold {RANGE} inf", None),
    ("segment: --background-threshold -1", "segment", SEGMENT + ["--background-threshold", "-1"], 2,
     f"--background-threshold {RANGE} -1.0", None),
    ("segment: --background-threshold 5", "segment", SEGMENT + ["--background-threshold", "5"], 2,
     f"--background-threshold {RANGE} 5.0", None),
    ("segment: --background-scale nan", "segment", SEGMENT + ["--background-scale", "nan"], 2,
     "--background-scale must be a finite number > 0, got nan", None),
    ("segment: --alpha nan", "segment", SEGMENT + ["--alpha", "nan"], 2, "--alpha " + RANGE + " nan", None),
    ("segment: --labels ''", "segment", SEGMENT + ["--labels", ""], 2, "no labels given", None),
    ("segment: --device meta", "segment", SEGMENT + ["--device", "meta"], 2,
     "--device meta holds no data and cannot run a model", None),
    ("segment: --device vulkan", "segment", SEGMENT + ["--device", "vulkan"], 2,
     "--device vulkan is not supported", None),
    ("segment: --device nope", "segment", SEGMENT + ["--device", "nope"], 2, "--device 'nope' is unknown", None),
    ("segment: --output a file", "segment", SEGMENT + ["--output", "{file}"], 2,
     "cannot write {file}: it is a file, not a folder", None),
    ("segment: --output under a file", "segment", SEGMENT + ["--output", "{file}/out"], 2,
     "cannot write {file}/out: {file} is a file, not a folder", None),
    ("segment: --output unwritable", "segment", SEGMENT + ["--output", "/sys/simzss_out"], 2,
     "cannot write /sys/simzss_out: permission denied", None),
    ("segment: disk full", "segment", SEGMENT, 1, "cannot write {out}/tiny_labels.png: no space left on the device",
     "enospc"),
    ("segment: checkpoint of another model", "segment", SEGMENT + ["--model", "simzss-tiny", "--checkpoint",
                                                                   "{other}"], 2,
     "checkpoint {other} does not fit simzss-tiny (was it trained with another --model?): " + WIDTH, None),
    ("segment: truncated checkpoint", "segment", SEGMENT + ["--checkpoint", "{truncated}"], 2,
     "cannot read checkpoint {truncated}", None),
    ("segment: missing image", "segment", SEGMENT + ["--image", "{missing}"], 2, "image not found", None),
    ("segment: unreadable image", "segment", SEGMENT + ["--image", "{broken}"], 1, "cannot read image", None),
    # simzss-visualize
    ("visualize: --scales nan", "visualize", VISUALIZE + ["--scales", "1", "nan"], 2,
     "--scales must be a finite number > 0, got nan", None),
    ("visualize: --scales 0", "visualize", VISUALIZE + ["--scales", "0"], 2,
     "--scales must be a finite number > 0, got 0.0", None),
    ("visualize: --scales -2", "visualize", VISUALIZE + ["--scales", "-2"], 2,
     "--scales must be a finite number > 0, got -2.0", None),
    ("visualize: --labels ''", "visualize", VISUALIZE + ["--labels", ""], 2, "no labels given", None),
    ("visualize: --device meta", "visualize", VISUALIZE + ["--device", "meta"], 2, "--device meta holds no data",
     None),
    ("visualize: --output a file", "visualize", VISUALIZE + ["--output", "{file}"], 2,
     "cannot write {file}: it is a file, not a folder", None),
    ("visualize: --output unwritable", "visualize", VISUALIZE + ["--output", "/sys/simzss_out"], 2,
     "cannot write /sys/simzss_out: permission denied", None),
    ("visualize: disk full", "visualize", VISUALIZE, 1, "cannot write {out}/tiny_pca.png: no space left on the device",
     "enospc"),
    ("visualize: checkpoint of another model", "visualize", VISUALIZE + ["--model", "simzss-tiny", "--checkpoint",
                                                                         "{other}"], 2, WIDTH, None),
    # simzss-evaluate
    ("evaluate: --background-threshold nan", "evaluate", EVALUATE + ["--background-threshold", "nan"], 2,
     f"--background-threshold {RANGE} nan", None),
    ("evaluate: --background-threshold inf", "evaluate", EVALUATE + ["--background-threshold", "inf"], 2,
     f"--background-threshold {RANGE} inf", None),
    ("evaluate: --background-threshold -1", "evaluate", EVALUATE + ["--background-threshold", "-1"], 2,
     f"--background-threshold {RANGE} -1.0", None),
    ("evaluate: --background-threshold 5", "evaluate", EVALUATE + ["--background-threshold", "5"], 2,
     f"--background-threshold {RANGE} 5.0", None),
    ("evaluate: --background-scale 0", "evaluate", EVALUATE + ["--background-scale", "0"], 2,
     "--background-scale must be a finite number > 0, got 0.0", None),
    ("evaluate: --device meta", "evaluate", EVALUATE + ["--device", "meta"], 2, "--device meta holds no data", None),
    ("evaluate: checkpoint of another model", "evaluate", EVALUATE + ["--checkpoint", "{other}"], 2,
     "checkpoint {other} does not fit simzss-tiny (was it trained with another --model?): " + WIDTH, None),
    ("evaluate: missing data root", "evaluate", EVALUATE + ["--data-root", "{missing}"], 2, "does not exist", None),
    ("evaluate: --output under a file, before evaluating", "evaluate", EVALUATE + ["--output", "{file}/r.json"], 2,
     "{file} is a file, not a folder", None),
    ("evaluate: --output unwritable, before evaluating", "evaluate", EVALUATE + ["--output", "/sys/r.json"], 2,
     "cannot write /sys/r.json: permission denied", None),
    ("evaluate: label value out of range", "evaluate", EVALUATE + ["--data-root", "{voc_bad_label}"], 2,
     "2007_000033.png", None),
    # simzss-preprocess
    ("preprocess: bank with an empty entry", "preprocess", PREPROCESS + ["--concept-bank", "{bank_empty}"], 2,
     "concept bank {bank_empty}, line 3: entry '-' is empty once normalised", None),
    ("preprocess: bank not UTF-8", "preprocess", PREPROCESS + ["--concept-bank", "{bank_latin1}"], 2,
     "concept bank {bank_latin1}, line 2: not UTF-8 text (byte 0xe9 at column 4)", None),
    ("preprocess: missing bank", "preprocess", PREPROCESS + ["--concept-bank", "{missing}"], 2,
     "concept bank file not found", None),
    ("preprocess: --output a file", "preprocess", PREPROCESS + ["--output", "{file}"], 2,
     "output directory '{file}' is not writable", None),
    ("preprocess: --output unwritable", "preprocess", PREPROCESS + ["--output", "/sys/simzss_shards"], 2,
     "output directory '/sys/simzss_shards' is not writable", None),
    ("preprocess: --batch-size 0", "preprocess", PREPROCESS + ["--batch-size", "0"], 2,
     "--batch-size must be positive", None),
    ("preprocess: missing shards", "preprocess", PREPROCESS + ["--input", "{missing}/{{00000..00001}}.tar"], 2,
     "no input shard matches", None),
    # simzss-checkpoint
    ("checkpoint: export of another model", "checkpoint", EXPORT + ["--checkpoint", "{other}"], 2,
     "checkpoint {other} does not fit simzss-tiny (was it trained with another --model?): " + WIDTH, None),
    ("checkpoint: export of a truncated file", "checkpoint", EXPORT + ["--checkpoint", "{truncated}"], 2,
     "cannot read checkpoint {truncated}", None),
    ("checkpoint: export to a file", "checkpoint", EXPORT + ["--output", "{file}"], 2,
     "cannot write {file}: it is a file, not a folder", None),
    ("checkpoint: export unwritable", "checkpoint", EXPORT + ["--output", "/sys/simzss_model"], 2,
     "cannot write /sys/simzss_model: permission denied", None),
    ("checkpoint: export, disk full", "checkpoint", EXPORT, 1,
     "cannot write {out}/open_clip_model.safetensors: no space left on the device", "enospc"),
    # simzss-clip-benchmark
    ("clip-benchmark: eval, checkpoint of another model", "clip-benchmark", CB_EVAL + ["--checkpoint", "{other}"], 2,
     "checkpoint {other} does not fit simzss-tiny (was it trained with another --model?): " + WIDTH, None),
    ("clip-benchmark: eval, unknown flag", "clip-benchmark", CB_EVAL + ["--nope"], 2,
     "unrecognized arguments: --nope", None),
    ("clip-benchmark: eval, --output under a file", "clip-benchmark", CB_EVAL + ["--output", "{file}/r.json"], 2,
     "cannot write {file}: it is a file, not a folder", None),
    ("clip-benchmark: suite, --output_dir a file", "clip-benchmark",
     ["suite", "--model", "simzss-tiny", "--dataset_root", "{missing}", "--output_dir", "{file}"], 2,
     "cannot write {file}: it is a file, not a folder", None),
    ("clip-benchmark: merge, --output unwritable", "clip-benchmark",
     ["merge", "a={missing}", "--output", "/sys/simzss_table"], 2,
     "cannot write /sys/simzss_table.csv: permission denied", None),
    # simzss-demo (only what is refused before the demo starts)
    ("demo: --seeds x", "demo", ["--seeds", "x", "--output", "{out}"], 2, "invalid int value: 'x'", None),
    ("demo: --output a file", "demo", ["--quick", "--output", "{file}"], 2,
     "cannot write {file}: it is a file, not a folder", None),
    # simzss-app (validation only: every row is refused before a server starts)
    ("app: --port 0", "app", ["--model", "simzss-tiny", "--port", "0", "--output-dir", "{out}"], 2,
     "--port must be positive", None),
    ("app: --device meta", "app", ["--model", "simzss-tiny", "--device", "meta", "--output-dir", "{out}"], 2,
     "--device meta holds no data", None),
    ("app: checkpoint of another model", "app", ["--model", "simzss-tiny", "--checkpoint", "{other}", "--device",
                                                 "cpu", "--output-dir", "{out}"], 2, WIDTH, None),
    # python -m training.main (tests/test_faults.py has these and more, with trained checkpoints)
    ("training: missing shards", "training", TRAIN + ["--train-data", "{missing}/{{00000..00001}}.tar"], 2,
     "2 of 2 shards not found", None),
    ("training: unknown --model", "training", TRAIN + ["--model", "simzss-nope"], 2,
     "unknown SimZSS model 'simzss-nope'", None),
    ("training: --concept-tau nan", "training", TRAIN + ["--concept-tau", "nan"], 2,
     "--concept-tau must be a finite number > 0, got nan", None),
    ("training: --lambda-concept nan", "training", TRAIN + ["--lambda-concept", "nan"], 2,
     "--lambda-concept must be a finite number >= 0, got nan", None),
    ("training: --concept-temperature inf", "training", TRAIN + ["--concept-temperature", "inf"], 2,
     "--concept-temperature must be a finite number > 0", None),
    ("training: --lr nan", "training", TRAIN + ["--lr", "nan"], 2, "--lr must be a finite number >= 0, got nan", None),
    ("training: --batch-size 0", "training", TRAIN + ["--batch-size", "0"], 2, "--batch-size must be an integer >= 1",
     None),
    ("training: --device meta", "training", TRAIN + ["--device", "meta"], 2, "--device meta holds no data", None),
    ("training: --logs a file", "training", TRAIN + ["--logs", "{file}"], 2, "is a file, not a folder", None),
    ("training: truncated --resume", "training", TRAIN + ["--resume", "{truncated}"], 2, "cannot read checkpoint",
     None),
    ("training: bank with an empty entry", "training", TRAIN + ["--concept-bank", "{bank_empty}"], 2,
     "concept bank {bank_empty}, line 3: entry '-' is empty once normalised", None),
    ("training: bank not UTF-8", "training", TRAIN + ["--concept-bank", "{bank_latin1}"], 2,
     "concept bank {bank_latin1}, line 2: not UTF-8 text", None),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs shared by the rows (read-only for them)."""
    import open_clip_simzss
    from open_clip_simzss.weights.save import save_pretrained
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    tiny = open_clip_simzss.create_model("simzss-tiny")
    save_pretrained(tiny, root / "model", model_name="simzss-tiny")
    torch.save({"epoch": 1, "state_dict": tiny.state_dict()}, root / "tiny.pt")
    other = open_clip_simzss.create_model("simzss-tiny", text_cfg=dict(context_length=77, vocab_size=49408,
                                                                       width=64, heads=4, layers=1))
    torch.save({"epoch": 1, "state_dict": other.state_dict()}, root / "other.pt")
    (root / "truncated.pt").write_bytes((root / "tiny.pt").read_bytes()[:4096])
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "tiny.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    (root / "a_file").write_text("not a folder")
    (root / "bank_empty.txt").write_text("# a bank\ncat\n-\n\nsky\n", encoding="utf-8")
    (root / "bank_latin1.txt").write_bytes("cat\ncaf\u00e9\n".encode("latin-1"))
    write_voc(root / "voc")
    write_voc(root / "voc_bad_label")
    label = root / "voc_bad_label" / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000033.png"
    values = np.asarray(Image.open(label)).copy()
    values[0, 0] = 100  # VOC has 21 classes (0..20) and 255
    Image.fromarray(values).save(label)
    return {"model": root / "model", "ckpt": root / "tiny.pt", "other": root / "other.pt",
            "truncated": root / "truncated.pt", "image": root / "tiny.png", "broken": root / "broken.jpg",
            "file": root / "a_file", "bank_empty": root / "bank_empty.txt", "bank_latin1": root / "bank_latin1.txt",
            "voc": root / "voc", "voc_bad_label": root / "voc_bad_label", "missing": root / "missing",
            "shards": write_shards(root / "shards", 1, 4), "root": root}


def files_under(*folders):
    return {str(p): p.stat().st_size for folder in folders if folder.exists() for p in folder.rglob("*")
            if not p.is_dir()}


def run_command(command, argv, capsys):
    module = importlib.import_module(COMMANDS[command])
    main = module.cli if command == "training" else module.main
    try:
        status = main(argv)
    except SystemExit as stop:  # argparse's own exits
        status = stop.code
    captured = capsys.readouterr()
    return status, captured.err


def enospc(monkeypatch):
    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full_disk)


def row_params():
    for row in ROWS:
        marks = []
        if "/sys/" in " ".join(row[2]):
            marks.append(pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.isdir("/sys"),
                                            reason="/sys is Linux's unwritable folder"))
        yield pytest.param(*row[1:], id=row[0], marks=marks)


@pytest.mark.parametrize("command, argv, status, message, fault", row_params())
def test_bad_input_is_one_line(command, argv, status, message, fault, world, tmp_path, monkeypatch, capsys):
    values = {k: str(v) for k, v in world.items()} | {"out": str(tmp_path / "out")}
    argv = [a.format(**values) for a in argv]
    message = message.format(**values)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # simzss-app sets it when unset
    before = files_under(world["root"])
    if fault == "enospc":
        enospc(monkeypatch)
    got, err = run_command(command, argv, capsys)
    monkeypatch.undo()
    lines = err.strip().splitlines()
    assert got == status, err
    assert "Traceback" not in err and 1 <= len(lines) <= 2, err
    assert lines[-1].startswith("error: ") and message in lines[-1], err
    assert files_under(tmp_path) == {}, "a result or temporary file was left"
    assert files_under(world["root"]) == before


def test_evaluate_results_are_strict_json(world, tmp_path, capsys):
    """A class absent from the images has no IoU: the JSON says null, never NaN (strict readers refuse it)."""
    import json
    output = tmp_path / "results.json"
    status, err = run_command("evaluate", [a.format(voc=world["voc"]) for a in EVALUATE] + ["--output", str(output)],
                              capsys)
    assert status == 0, err

    def refuse(constant):
        raise ValueError(f"{constant} in {output}")
    json.loads(output.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("kwargs, message", [
    (dict(background_threshold=float("nan")), "background_threshold must be a finite number >= 0 and <= 1, got nan"),
    (dict(background_threshold=1.5), "background_threshold must be a finite number >= 0 and <= 1, got 1.5"),
    (dict(background_scale=float("inf")), "background_scale must be a finite number > 0, got inf"),
    (dict(background_scale=0), "background_scale must be a finite number > 0, got 0"),
])
def test_segmenters_refuse_bad_background_arguments(kwargs, message, tiny_model, tokenizer):
    from open_clip_simzss.segmentation.protocol import SegmentationProtocol
    from open_clip_simzss.segmentation.segmenter import Segmenter
    with pytest.raises(ValueError) as error:
        SegmentationProtocol.of(templates="photo1", **kwargs)
    assert str(error.value) == message
    with pytest.raises(ValueError) as error:  # at construction, not when the first labels come
        Segmenter(tiny_model, tokenizer, **kwargs)
    assert str(error.value) == message


def test_bank_files_skip_blank_lines_and_refuse_empty_entries(tmp_path):
    from open_clip_simzss.concepts.bank import ConceptBank, ConceptBankError
    (tmp_path / "spaced.txt").write_text("cat\n\n   \n# a comment\r\nsky\r\n", encoding="utf-8")
    spaced = ConceptBank.from_file(tmp_path / "spaced.txt")
    assert spaced.names == ["cat", "sky"] and spaced.sha256 == ConceptBank(["cat", "sky"]).sha256
    (tmp_path / "empty.txt").write_text("cat\n_ -\nsky\n", encoding="utf-8")
    with pytest.raises(ConceptBankError, match=r"empty\.txt, line 2: entry '_ -' is empty once normalised"):
        ConceptBank.from_file(tmp_path / "empty.txt")
