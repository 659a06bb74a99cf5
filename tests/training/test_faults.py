"""Bad input and faults: every case ends with one ``error:`` line and a non-zero exit, never a traceback, a hang
or a partial result (README "Training"); an interrupted checkpoint save resumes as if nothing happened."""
import errno
import os
import subprocess
import sys
import tarfile
import time

import pytest
import torch

from open_clip_simzss.cli.preprocess import main as preprocess_main
from training.data import collate_concepts, concepts_to_rows
from open_clip_simzss.loss import SimZSSLoss
from open_clip_simzss.validation import check_number
from tests.helpers.shards import write_shards
from training.main import cli

pytestmark = pytest.mark.slow  # processes, training or installs (make test-fast leaves it out)

BATCH = 4
NO_AUG = ["--aug-cfg", "scale=(1.0, 1.0)"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, annotated_shards):
    root = tmp_path_factory.mktemp("shards")
    return {
        "clean": annotated_shards,
        "small": write_shards(root / "small", 1, BATCH),  # fewer samples than 2 x BATCH
        "corrupt": write_shards(root / "corrupt", 1, 12, corrupt_keys={f"{i:09d}" for i in range(12)}),
        "root": root,
    }


def train_argv(tmp_path, data, *extra, name="run"):
    return ["--model", "simzss-tiny", "--train-data", data, "--train-num-samples", str(2 * BATCH),
            "--batch-size", str(BATCH), "--workers", "0", "--lr", "2e-3", "--warmup", "1", "--wd", "0.0",
            "--logs", str(tmp_path / "logs"), "--name", name, "--seed", "0", "--precision", "fp32",
            "--lambda-concept", "0", *NO_AUG, *extra]


def assert_one_error_line(err: str, message: str, max_lines: int = 2):
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) <= max_lines, err
    assert lines[-1].startswith("error:") and message in lines[-1], err
    assert sum(line.startswith("error:") for line in lines) == 1, err


def written_results(tmp_path):
    return sorted(p.name for p in (tmp_path / "logs").rglob("*") if p.is_file() and p.suffix in (".pt", ".tmp"))


@pytest.mark.parametrize("case, extra, message", [
    ("missing shards", ["--train-data", "missing/{00000..00001}.tar"], "2 of 2 shards not found"),
    ("a folder", ["--train-data", "<root>"], "is a folder"),
    ("unknown model", ["--model", "simzss-nope"], "unknown SimZSS model 'simzss-nope'"),
    ("nan tau", ["--concept-tau", "nan"], "--concept-tau must be a finite number > 0, got nan"),
    ("nan lambda", ["--lambda-concept", "nan"], "--lambda-concept must be a finite number >= 0, got nan"),
    ("inf temperature", ["--concept-temperature", "inf"], "--concept-temperature must be a finite number > 0"),
    ("nan lr", ["--lr", "nan"], "--lr must be a finite number >= 0, got nan"),
    ("zero batch", ["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    ("meta device", ["--device", "meta"], "--device meta holds no data"),
    ("logs is a file", ["--logs", "<file>"], "is a file, not a folder"),
    ("logs under a file", ["--logs", "<file>/sub"], "is a file, not a folder"),
    ("truncated resume", ["--resume", "<truncated>"], "cannot read checkpoint"),
    ("resume of another model", ["--resume", "<other>"], "checkpoint <other> does not fit simzss-tiny"),
    ("truncated pretrained", ["--pretrained", "<truncated>"], "cannot read checkpoint <truncated>"),
    ("pretrained of another model", ["--pretrained", "<other>"], "checkpoint <other> does not fit simzss-tiny"),
])
def test_bad_training_input_is_one_line(case, extra, message, tmp_path, shards, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    torch.save({"epoch": 1, "state_dict": {"w": torch.zeros(2)}, "optimizer": {}}, tmp_path / "other.pt")
    torch.save({"w": torch.zeros(1000)}, tmp_path / "full.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:1000])
    values = {"root": str(shards["root"]), "file": str(tmp_path / "a_file"),
              "truncated": str(tmp_path / "truncated.pt"), "other": str(tmp_path / "other.pt")}
    for key, value in values.items():
        extra = [arg.replace(f"<{key}>", value) for arg in extra]
        message = message.replace(f"<{key}>", value)
    assert cli(train_argv(tmp_path, shards["clean"]) + extra) == 2
    # Refused before anything starts: the error line alone; once the model is built, OpenCLIP's device warning
    # (two lines) may come first.
    late = case.startswith(("pretrained", "truncated pretrained", "resume of"))
    assert_one_error_line(capsys.readouterr().err, message, max_lines=3 if late else 1)
    assert written_results(tmp_path) == []


@pytest.mark.parametrize("case, data, extra, message", [
    ("every sample corrupt", "corrupt", ["--max-consecutive-skips", "5"],
     "the first 5 training samples read by a loader worker were all unusable: image does not decode"),
    ("every sample corrupt, in a loader worker", "corrupt", ["--max-consecutive-skips", "5", "--workers", "1"],
     "the first 5 training samples read by a loader worker were all unusable"),
    ("fewer samples than a batch", "small", ["--batch-size", str(2 * BATCH)],
     f"gave no batch: {BATCH} usable samples for --batch-size {2 * BATCH}"),
    ("every sample corrupt, limit not reached", "corrupt", [], "gave no batch: 0 usable samples"),
])
def test_data_without_a_batch_stops_in_one_line(case, data, extra, message, tmp_path, shards, capsys):
    start = time.perf_counter()
    assert cli(train_argv(tmp_path, shards[data], *extra)) == 2
    assert time.perf_counter() - start < 60
    err = capsys.readouterr().err
    # The run's own log lines come first; at most WARNINGS_PER_CAUSE warnings of the one cause.
    assert_one_error_line(err, message, max_lines=30)
    assert err.count("skipped sample") <= 5
    assert written_results(tmp_path) == []


def test_missing_shards_exit_at_once_from_the_command_line(tmp_path):
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "training.main", "--model", "simzss-tiny", "--train-data",
                             "missing/{00000..00001}.tar", "--logs", str(tmp_path / "logs")],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and time.perf_counter() - start < 60
    assert result.stderr.strip() == "error: --train-data: 2 of 2 shards not found, e.g. missing/00000.tar"


def test_an_interrupted_save_resumes_from_the_previous_checkpoint(tmp_path, shards, monkeypatch, capsys):
    argv = train_argv(tmp_path, shards["clean"], "--epochs", "2", "--save-frequency", "1")
    assert cli(argv + ["--name", "whole"]) == 0
    whole = tmp_path / "logs" / "whole"

    real_save, calls = torch.save, []

    def save_then_fill_the_disk(obj, handle, *args, **kwargs):
        calls.append(handle)
        if len(calls) == 2:  # epoch 2's checkpoint: half written, then the disk is full
            handle.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_fill_the_disk)
    capsys.readouterr()
    assert cli(argv + ["--name", "cut"]) == 1
    cut = tmp_path / "logs" / "cut"
    err = capsys.readouterr().err
    assert_one_error_line(err, f"cannot write {cut / 'checkpoints' / 'epoch_2.pt'}: no space left on the device",
                          max_lines=100)
    assert sorted(os.listdir(cut / "checkpoints")) == ["epoch_1.pt"]  # no partial file, no temporary
    monkeypatch.setattr(torch, "save", real_save)

    # A partial file left by a writer that was not atomic is skipped with a warning.
    (cut / "checkpoints" / "epoch_2.pt").write_bytes((cut / "checkpoints" / "epoch_1.pt").read_bytes()[:5000])
    (cut / "history-rank0.jsonl").unlink()
    assert cli(argv + ["--name", "cut", "--resume", "latest"]) == 0
    log = (cut / "out.log").read_text()
    assert f"resume: skipping {cut / 'checkpoints' / 'epoch_2.pt'}, it cannot be read" in log
    assert f"resuming checkpoint '{cut / 'checkpoints' / 'epoch_1.pt'}' (epoch 1)" in log

    def history(folder):
        import json
        return [json.loads(line) for line in (folder / "history-rank0.jsonl").read_text().splitlines()]
    resumed, reference = history(cut), history(whole)[-len(history(cut)):]
    assert [h["step"] for h in resumed] == [h["step"] for h in reference] == [2, 3]
    assert [h["loss"] for h in resumed] == pytest.approx([h["loss"] for h in reference], abs=1e-6)
    final = torch.load(cut / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    expected = torch.load(whole / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(final[k], expected[k], atol=1e-6) for k in expected)


def test_concept_ids_outside_int64_or_the_bank_are_dropped_and_counted():
    record = {"concepts": [{"id": 3, "positions": [1]}, {"id": 2 ** 64, "positions": [1]},
                           {"id": 2 ** 63, "positions": [2]}, {"id": -1, "positions": [1]},
                           {"id": True, "positions": [1]}, {"id": 1.5, "positions": [1]},
                           {"id": "7", "positions": [1]}, {"id": 9, "positions": [1]}]}
    rows, dropped = concepts_to_rows(record, eot_position=5, num_ids=None)
    assert rows == [(3, [1]), (9, [1])] and dropped == 6
    assert concepts_to_rows(record, eot_position=5, num_ids=5) == ([(3, [1])], 7)
    assert collate_concepts([[(2 ** 63 - 1, [1])]], 8)["concept_ids"].tolist() == [2 ** 63 - 1]


@pytest.mark.parametrize("kwargs, message", [
    (dict(tau=float("nan")), "tau must be a finite number > 0, got nan"),
    (dict(lambda_concept=float("nan")), "lambda_concept must be a finite number >= 0, got nan"),
    (dict(concept_temperature=float("inf")), "concept_temperature must be a finite number > 0, got inf"),
    (dict(tau=0.0), "tau must be a finite number > 0, got 0.0"),
    (dict(lambda_concept=-1), "lambda_concept must be a finite number >= 0, got -1"),
])
def test_loss_refuses_non_finite_and_out_of_range_arguments(kwargs, message):
    with pytest.raises(ValueError) as error:
        SimZSSLoss(**kwargs)
    assert str(error.value) == message


def test_check_number_bounds():
    assert check_number("x", "0.5", above=0, below=1) == 0.5
    assert check_number("x", 1, minimum=1, maximum=1) == 1.0
    for value in (0, 1, float("-inf"), "abc", None):
        with pytest.raises(ValueError, match="^x must be"):
            check_number("x", value, above=0, below=1)


# --- simzss-preprocess --------------------------------------------------------------------------------------
def member_offsets(path):
    with tarfile.open(path) as archive:
        return [member.offset for member in archive.getmembers()]


@pytest.mark.parametrize("damage", ["cut at a header", "cut inside a member", "corrupt header"])
def test_a_damaged_shard_fails_without_output(damage, tmp_path, capsys):
    pattern = write_shards(tmp_path / "in", 1, 6)
    shard = tmp_path / "in" / "00000.tar"
    data, middle = shard.read_bytes(), member_offsets(shard)[9]
    shard.write_bytes({"cut at a header": data[:middle], "cut inside a member": data[:middle + 700],
                       "corrupt header": data[:middle] + b"x" * 512 + data[middle + 512:]}[damage])
    assert preprocess_main(["--input", pattern, "--output", str(tmp_path / "out"), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"failed: {shard}: " in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["preprocess_stats.json"]


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--workers", "0"], "--workers must be positive"),
    (["--input", "missing/{00000..00001}.tar"], "no input shard matches"),
])
def test_bad_preprocess_input_is_one_line(extra, message, tmp_path, capsys):
    pattern = write_shards(tmp_path / "in", 1, 2)
    assert preprocess_main(["--input", pattern, "--output", str(tmp_path / "out"), *extra]) == 2
    assert_one_error_line(capsys.readouterr().err, message, max_lines=1)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_preprocess_workers_die_with_the_main_process(tmp_path):
    script = (
        "import multiprocessing, os, time\n"
        "from open_clip_simzss.concepts.preprocess import _init_worker\n"
        "def pid(_):\n"
        "    time.sleep(0.5)\n"
        "    return os.getpid()\n"
        "if __name__ == '__main__':\n"
        "    pool = multiprocessing.get_context('fork').Pool(2, initializer=_init_worker,\n"
        "                                                    initargs=(object(), 'm', None, 1, True))\n"
        "    print(*set(pool.map(pid, range(4), chunksize=1)), flush=True)\n"
        "    pool.map_async(time.sleep, [600, 600], chunksize=1)\n"
        "    time.sleep(600)\n"
    )
    main = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in main.stdout.readline().split()]
    assert workers and all(os.path.exists(f"/proc/{pid}") for pid in workers)
    main.kill()  # SIGKILL: no atexit, no pool.terminate()
    main.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- model folders (simzss-checkpoint export) ---------------------------------------------------------------
def test_an_interrupted_export_leaves_no_folder(tmp_path, monkeypatch):
    import open_clip_simzss
    from open_clip_simzss.atomic import WriteError
    from open_clip_simzss.weights.read import CheckpointError
    from open_clip_simzss.weights.resolve import CONFIG_NAME
    from open_clip_simzss.weights.save import save_pretrained

    model = open_clip_simzss.create_model("simzss-tiny")

    def half_then_full(obj, handle, *args, **kwargs):
        handle.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(WriteError, match="no space left on the device"):
        save_pretrained(model, tmp_path / "new" / "folder", model_name="simzss-tiny", safe_serialization="both")
    assert os.listdir(tmp_path / "new") == []  # neither the folder nor its temporary one
    monkeypatch.undo()
    folder = save_pretrained(model, tmp_path / "new" / "folder", model_name="simzss-tiny")
    assert sorted(os.listdir(folder)) == sorted([CONFIG_NAME, "open_clip_model.safetensors"])
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        save_pretrained(model, tmp_path / "a_file", model_name="simzss-tiny")


def test_resume_candidates_are_newest_first(tmp_path):
    from training.checkpoints import checkpoint_candidates
    for name in ("epoch_2.pt", "epoch_10.pt", "epoch_9.pt", "epoch_latest.pt", ".epoch_11.pt.123.tmp", "x.pt"):
        (tmp_path / name).write_bytes(b"")
    names = [os.path.basename(p) for p in checkpoint_candidates(tmp_path, most_recent=False)]
    assert names == ["epoch_10.pt", "epoch_9.pt", "epoch_2.pt"]
    assert os.path.basename(checkpoint_candidates(tmp_path, most_recent=True)[0]) == "epoch_latest.pt"
