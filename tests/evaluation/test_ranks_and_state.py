"""Evaluation across processes and runs (docs/evaluation.md, "Many GPUs", "Interrupted runs"): 2 gloo processes
give the JSON of 1 process, an interrupted run resumes to the JSON of an uninterrupted one, and partial results
of other settings are refused."""
import json
import os
import subprocess
import sys

import pytest
import torch

from open_clip_simzss.workflows import synthetic
from open_clip_simzss.cli import evaluate
from open_clip_simzss.evaluation.state import PartialState, state_folder
from open_clip_simzss.evaluation.metrics import IoUAccumulator, ThresholdSweep

pytestmark = pytest.mark.slow  # processes, training or installs (make test-fast leaves it out)

IMAGES = 5  # shards of 2 images: 3 shards, split 2 + 1 between 2 ranks


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The synthetic scenes as two folder datasets: plain, and with category 0 as a thresholded background."""
    root = tmp_path_factory.mktemp("scenes")
    plain = synthetic.write_folder_dataset(root / "plain", IMAGES, seed=5, size=32)
    with_bg = synthetic.write_folder_dataset(root / "with_bg", IMAGES, seed=6, size=32)
    names = (with_bg / "classnames.txt").read_text().splitlines()
    (with_bg / "classnames.txt").write_text("\n".join(names[1:]) + "\n")  # value 0 is the background
    options = json.loads((with_bg / "dataset.json").read_text())
    (with_bg / "dataset.json").write_text(json.dumps(dict(options, name="scenes_bg", background=True)))
    return plain, with_bg


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint[0]


def argv(folders, checkpoint, output, *extra):
    plain, with_bg = folders
    return ["--model", "simzss-tiny", "--checkpoint", str(checkpoint), "--dataset",
            f"folder:{plain},folder:{with_bg}", "--background-sweep=-0.1:0.1:0.05", "--templates", "photo1",
            "--shard-size", "2", "--device", "cpu", "--quiet", "--workers", "0", "--output", str(output), *extra]


def comparable(path):
    """The JSON without what may differ between equal runs: timings and the number of processes."""
    report = json.loads(path.read_text())
    assert report.pop("world_size") >= 1
    for result in report["datasets"].values():
        assert result.pop("seconds") >= 0
    return report


@pytest.fixture(scope="module")
def reference(folders, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "results.json"
    assert evaluate.main(argv(folders, checkpoint, out)) == 0
    report = json.loads(out.read_text())
    assert report["world_size"] == 1 and set(report["datasets"]) == {"synthetic_scenes", "scenes_bg"}
    assert len(report["datasets"]["scenes_bg"]["background"]["sweep"]) == 5
    assert not state_folder(out).exists()  # removed once the final JSON is written
    return out


def test_two_processes_give_the_json_of_one(folders, checkpoint, reference, tmp_path):
    """``torchrun --nproc_per_node 2 -m open_clip_simzss evaluate ...`` (docs/evaluation.md, "Many GPUs"), as
    users start it: 2 gloo processes split the images, and rank 0 writes the JSON a single process writes."""
    out = tmp_path / "results.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    # "--" ends torchrun's own options (torch 2.14's torchrun would take "--logs..." flags for its own)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "--", "open_clip_simzss", "evaluate", *argv(folders, checkpoint, out)],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(out.read_text())["world_size"] == 2
    assert comparable(out) == comparable(reference)  # per-class IoU, every sweep threshold, the selection


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(folders, checkpoint, reference, tmp_path,
                                                                   monkeypatch, capsys):
    out = tmp_path / "results.json"
    saved = []
    original = PartialState.save_shard

    def save_then_die(self, *args):
        original(self, *args)
        saved.append(args[3])
        if len(saved) == 1:
            raise KeyboardInterrupt  # killed right after the first shard of the first dataset

    monkeypatch.setattr(PartialState, "save_shard", save_then_die)
    assert evaluate.main(argv(folders, checkpoint, out)) == 130  # "error: interrupted", as after Ctrl-C
    assert not out.exists()  # nothing partial is presented as final
    shards = state_folder(out) / "synthetic_scenes" / "eval"
    assert sorted(p.name for p in shards.iterdir()) == ["shard-00000.safetensors"]
    capsys.readouterr()

    # a rerun with other settings is refused in one line naming the difference; the partial results stay
    assert evaluate.main(argv(folders, checkpoint, out, "--stride", "8")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other settings" in err and "stride" in err

    images_run = []
    original_accumulate = IoUAccumulator.update
    monkeypatch.setattr(IoUAccumulator, "update", lambda self, *a: images_run.append(1) or original_accumulate(self, *a))
    assert evaluate.main(argv(folders, checkpoint, out)) == 0
    assert "1 of 3 shards taken from the partial results" in capsys.readouterr().err
    assert len(images_run) == IMAGES - 2  # the first shard's 2 images were not run again
    assert saved == [0, 1, 2, 0, 1, 2]  # shard 0 of the first dataset once, before the interruption
    assert comparable(out) == comparable(reference)
    assert not state_folder(out).exists()


def test_restart_discards_partial_results(folders, checkpoint, tmp_path, capsys):
    out = tmp_path / "results.json"
    state = PartialState(state_folder(out))
    state.save_shard("synthetic_scenes", "eval", {"anything": 1}, 0, torch.zeros(1, 2, 2, dtype=torch.int64))
    assert evaluate.main(argv(folders, checkpoint, out)) == 2  # made with other settings
    assert evaluate.main(argv(folders, checkpoint, out, "--restart")) == 0
    assert out.exists() and not state.folder.exists()


def test_counts_round_trip_and_refuse_another_shape():
    sweep = ThresholdSweep(3, [0.2, 0.5])
    sweep.update(torch.tensor([0, 1, 1, 0]), torch.tensor([0.1, 0.6, 0.9, 0.3]), torch.tensor([1, 2, 0, 255]))
    again = ThresholdSweep(3, [0.2, 0.5])
    again.add_counts(sweep.counts())
    again.add_counts(sweep.counts())
    assert torch.equal(again.counts(), 2 * sweep.counts()) and again.mious() == sweep.mious()
    with pytest.raises(ValueError, match="shape"):
        IoUAccumulator(3).add_counts(sweep.counts())
