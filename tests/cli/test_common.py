"""The command-line layer's shared policy: --version on every command, exit status 2 for bad input and 1 for a
failure while working (one stderr line each), --debug adds the traceback; the [train] extra is imported only
where it is needed, and its absence is one line."""
import importlib
import subprocess
import sys

import pytest

import open_clip_simzss
from open_clip_simzss.cli import common
from open_clip_simzss.extras import MissingExtraError, require_train_extra

COMMANDS = ("segment", "visualize", "evaluate", "preprocess", "checkpoint", "clip_benchmark", "demo")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_prints_the_version(command, capsys):
    main = importlib.import_module(f"open_clip_simzss.cli.{command}").main
    try:
        status = main(["--version"])
    except SystemExit as e:  # argparse's version action exits
        status = e.code
    out = capsys.readouterr().out
    assert status in (0, None) and out.strip() == f"simzss-{command.replace('_', '-')} {open_clip_simzss.__version__}"


def _run(body, argv):
    return common.run(common.make_parser("x", "test"), body, argv)


def test_exit_status_and_one_line(capsys):
    def bad_input(args):
        raise common.UsageError("no labels given")

    def broken(args):
        raise RuntimeError("disk\nfull")

    assert _run(bad_input, []) == 2
    assert capsys.readouterr().err == "error: no labels given\n"
    assert _run(broken, []) == 1
    assert capsys.readouterr().err == "error: RuntimeError: disk full\n"  # one line, its type first
    assert _run(lambda args: 0, ["--nope"]) == 2
    assert capsys.readouterr().err == "error: unrecognized arguments: --nope\n"
    assert _run(broken, ["--debug"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.endswith("error: RuntimeError: disk full\n")


def test_library_input_errors_are_usage_errors(tmp_path, capsys):
    from open_clip_simzss.weights.load import load_model

    def load(args):
        load_model("simzss-tiny", str(tmp_path / "missing.pt"))

    assert _run(load, []) == 2
    assert capsys.readouterr().err == f"error: checkpoint not found: {tmp_path / 'missing.pt'}\n"


def test_missing_extra_is_one_line():
    with pytest.raises(MissingExtraError) as e:
        require_train_extra("simzss-preprocess", ("spacy", "no_such_module_for_this_test"))
    assert str(e.value) == ("simzss-preprocess needs the [train] extra (no_such_module_for_this_test not installed): "
                            "pip install 'open_clip_simzss[train]'")
    require_train_extra("training", ("torch",))  # installed: nothing to say


@pytest.mark.slow
def test_core_paths_do_not_import_the_train_extra():
    """``import open_clip_simzss``, building a model and the segmentation commands never import spaCy or
    WebDataset (a fresh interpreter: this test process has imported them already)."""
    code = ("import sys, open_clip_simzss; open_clip_simzss.create_model('simzss-tiny'); "
            "from open_clip_simzss.cli import segment, visualize, evaluate, checkpoint; "
            "from open_clip_simzss import Segmenter; "
            "print(sorted(m for m in ('spacy', 'webdataset', 'training.data') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "PATH": ""}, check=True).stdout
    assert out.strip() == "[]"
