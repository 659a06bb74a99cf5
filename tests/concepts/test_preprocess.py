"""Preprocessing CLI: WebDataset shards in, the same shards plus concepts.json out (README, "Concepts in captions")."""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from PIL import Image

from open_clip_simzss.concepts.extract import ConceptExtractor
from open_clip_simzss.concepts.provenance import EXTRACTOR_VERSION
from open_clip_simzss.cli.preprocess import main
from open_clip_simzss.concepts.shards import split_member_name

MTIME = 1_700_000_000


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _write_shard(path, samples):
    with tarfile.open(path, "w") as archive:
        for key, members in samples:
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mtime = len(data), MTIME
                archive.addfile(info, io.BytesIO(data))


def _read_members(path):
    with tarfile.open(path) as archive:
        return [(info.name, archive.extractfile(info).read()) for info in archive.getmembers()]


LONG_CAPTION = " ".join(["A dog on a bench near a tree."] * 12)
SHARDS = {
    "00000.tar": [
        ("000000000", {"jpg": _jpeg(0), "txt": b"Two tennis rackets on a clay court.", "json": b'{"key": "0"}'}),
        ("000000001", {"jpg": b"\xff\xd8 this is not a jpeg", "txt": b"A red bus driving down the road.",
                       "json": b'{"key": "1"}'}),  # corrupt image
        ("000000002", {"jpg": _jpeg(2), "txt": b"", "json": b'{"key": "2"}'}),  # empty caption
        ("000000003", {"jpg": _jpeg(3), "txt": b"\xff\xfe\xfa caf\xe9", "json": b'{"key": "3"}'}),  # not UTF-8
    ],
    "00001.tar": [
        ("000010000", {"jpg": _jpeg(4), "txt": "A café with a red umbrella.".encode(), "json": b"{}"}),
        ("000010001", {"jpg": _jpeg(5), "json": b"{}"}),  # no caption at all
        ("000010002", {"jpg": _jpeg(6), "txt": LONG_CAPTION.encode(), "json": b"{}"}),
    ],
}
CAPTIONS = {key: members.get("txt") for samples in SHARDS.values() for key, members in samples}


@pytest.fixture(scope="module")
def extractor():
    return ConceptExtractor("en_core_web_sm")


@pytest.fixture()
def input_dir(tmp_path):
    directory = tmp_path / "in"
    directory.mkdir()
    for name, samples in SHARDS.items():
        _write_shard(directory / name, samples)
    return directory


def _run(input_dir, output_dir, *extra):
    return main(["--input", f"{input_dir}/{{00000..00001}}.tar", "--output", str(output_dir), "--workers", "1",
                 *extra])


def _stats(output_dir, name="preprocess_stats.json"):
    return json.loads((output_dir / name).read_text(encoding="utf-8"))


def test_round_trip_copies_every_member_and_adds_concepts(input_dir, tmp_path, extractor):
    output_dir = tmp_path / "out"
    assert _run(input_dir, output_dir) == 0
    for name in SHARDS:
        original = _read_members(input_dir / name)
        written = _read_members(output_dir / name)
        copied = [(n, data) for n, data in written if not n.endswith(".concepts.json")]
        assert copied == original  # same names, same order, same bytes (the corrupt jpg included)
        annotations = [(n, data) for n, data in written if n.endswith(".concepts.json")]
        assert [split_member_name(n)[0] for n, _ in annotations] == [key for key, _ in SHARDS[name]]
        # Each annotation directly follows its sample's members.
        names = [n for n, _ in written]
        for key, members in SHARDS[name]:
            position = names.index(f"{key}.concepts.json")
            assert names[position - len(members):position] == [f"{key}.{ext}" for ext in members]
        for member_name, data in annotations:
            record = json.loads(data.decode("utf-8"))
            caption = CAPTIONS[split_member_name(member_name)[0]]
            if caption is None or caption.startswith(b"\xff"):
                assert record == {"version": 2, "caption": "", "concepts": [], "provenance": extractor.provenance}
            else:
                assert record == extractor.annotate(caption.decode("utf-8"))  # on-the-fly == preprocessed
    records = {n: json.loads(d) for n, d in _read_members(output_dir / "00000.tar") if n.endswith("json")}
    assert [c["text"] for c in records["000000000.concepts.json"]["concepts"]] == ["tennis racket"]
    assert [c["text"] for c in records["000000001.concepts.json"]["concepts"]] == ["bus", "road"]
    assert records["000000002.concepts.json"]["concepts"] == []
    long_record = json.loads(dict(_read_members(output_dir / "00001.tar"))["000010002.concepts.json"])
    assert 0 < len(long_record["concepts"]) < 36  # late concepts fall past the 77-token context
    assert not list(output_dir.glob("*.tmp"))

    stats = _stats(output_dir)
    assert (stats["samples"], stats["captions"], stats["missing_captions"], stats["undecodable_captions"]) == (
        7, 5, 1, 1)
    assert stats["captions_with_concepts"] == 4  # the empty caption has none
    assert stats["unreadable_images"] == 1
    assert stats["this_run"]["shards_processed"] == 2 and stats["this_run"]["shards_failed"] == []
    assert dict(stats["top_concepts"])["tennis racket"] == 1
    assert stats["concept_bank"] == "default" and stats["concept_bank_size"] == 278


def test_members_outside_samples_are_copied_without_annotation(tmp_path):
    input_dir, output_dir = tmp_path / "in", tmp_path / "out"
    input_dir.mkdir()
    with tarfile.open(input_dir / "00000.tar", "w") as archive:
        folder = tarfile.TarInfo("images")
        folder.type, folder.mtime = tarfile.DIRTYPE, MTIME
        archive.addfile(folder)
        for name, data in [("README", b"no extension"), ("images/0001.jpg", _jpeg(1)),
                           ("images/0001.txt", b"A dog on a bench."), ("images/._0001.jpg", b"resource fork")]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), MTIME
            archive.addfile(info, io.BytesIO(data))
    assert main(["--input", str(input_dir / "00000.tar"), "--output", str(output_dir), "--workers", "1"]) == 0
    with tarfile.open(output_dir / "00000.tar") as archive:
        names = archive.getnames()
        record = json.loads(archive.extractfile("images/0001.concepts.json").read())
    assert names == ["images", "README", "images/0001.jpg", "images/0001.txt", "images/0001.concepts.json",
                     "images/._0001.jpg"]
    assert [c["text"] for c in record["concepts"]] == ["dog", "bench"]
    assert _stats(output_dir)["samples"] == 1


def test_output_is_readable_by_webdataset(input_dir, tmp_path):
    import webdataset as wds

    output_dir = tmp_path / "out"
    assert _run(input_dir, output_dir, "--concept-bank", "none") == 0
    samples = list(wds.WebDataset(str(output_dir / "00000.tar"), shardshuffle=False))
    assert [sample["__key__"] for sample in samples] == [key for key, _ in SHARDS["00000.tar"]]
    record = json.loads(samples[0]["concepts.json"])
    assert [c["text"] for c in record["concepts"]] == ["tennis racket", "clay court"]
    assert record["provenance"]["concept_bank"] == {"name": "none", "sha256": None}


def test_records_and_stats_carry_the_provenance_of_the_bank_file(input_dir, tmp_path, extractor):
    bank_file = tmp_path / "bank.txt"
    bank_file.write_text("# two concepts\nbus\nTennis_Racket\n", encoding="utf-8")
    output_dir = tmp_path / "out"
    assert _run(input_dir, output_dir, "--concept-bank", str(bank_file)) == 0
    expected = {"concept_bank": {"name": str(bank_file), "sha256": hashlib.sha256(b"bus\ntennis racket").hexdigest()},
                "spacy_model": {"name": "en_core_web_sm", "version": extractor.nlp.meta["version"]},
                "extractor_version": EXTRACTOR_VERSION}
    records = [json.loads(d) for n, d in _read_members(output_dir / "00000.tar") if n.endswith("concepts.json")]
    assert records and all(record["provenance"] == expected for record in records)
    assert [c["text"] for c in records[1]["concepts"]] == ["bus"]
    assert _stats(output_dir)["provenance"] == expected


@pytest.mark.slow
def test_resume_skips_finished_shards_and_redoes_unfinished_ones(input_dir, tmp_path):
    output_dir = tmp_path / "out"
    assert _run(input_dir, output_dir) == 0
    first = {name: (output_dir / name).read_bytes() for name in SHARDS}
    stamps = {name: os.stat(output_dir / name).st_mtime_ns for name in SHARDS}

    assert _run(input_dir, output_dir) == 0
    stats = _stats(output_dir)
    assert stats["this_run"]["shards_processed"] == 0 and stats["this_run"]["shards_skipped"] == 2
    assert stats["samples"] == 7  # totals still cover the shards finished earlier
    assert {name: os.stat(output_dir / name).st_mtime_ns for name in SHARDS} == stamps

    # A killed run leaves only a temporary file named after its process: that shard is done again, the other
    # one is not, and the dead process's file is removed (a live process's one is left alone).
    (output_dir / "00001.tar").unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = output_dir / f".00001.tar.{int(dead.stdout)}.tmp"
    leftover.write_bytes(b"half a shard")
    live = output_dir / f".00001.tar.{os.getppid()}.tmp"
    live.write_bytes(b"another run's shard")
    assert _run(input_dir, output_dir) == 0
    stats = _stats(output_dir)
    assert stats["this_run"]["shards_processed"] == 1 and stats["this_run"]["shards_skipped"] == 1
    assert os.stat(output_dir / "00000.tar").st_mtime_ns == stamps["00000.tar"]
    assert {name: (output_dir / name).read_bytes() for name in SHARDS} == first  # deterministic output
    assert not leftover.exists() and live.read_bytes() == b"another run's shard"


@pytest.mark.slow
def test_two_workers_write_the_same_shards(input_dir, tmp_path):
    assert _run(input_dir, tmp_path / "one") == 0
    assert main(["--input", f"{input_dir}/*.tar", "--output", str(tmp_path / "two"), "--workers", "2"]) == 0
    for name in SHARDS:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    assert _stats(tmp_path / "two")["this_run"]["workers"] == 2


@pytest.mark.slow
def test_slurm_array_task_takes_its_share(input_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "8")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    output_dir = tmp_path / "out"
    assert _run(input_dir, output_dir) == 0
    assert sorted(p.name for p in output_dir.glob("*.tar")) == ["00001.tar"]
    stats = _stats(output_dir, "preprocess_stats.00001-of-00002.json")
    assert (stats["shard_index"], stats["num_shards"], stats["samples"]) == (1, 2, 3)
    # Explicit flags win over the environment.
    assert _run(input_dir, output_dir, "--shard-index", "0", "--num-shards", "2") == 0
    assert sorted(p.name for p in output_dir.glob("*.tar")) == ["00000.tar", "00001.tar"]


@pytest.mark.slow
def test_truncated_shard_fails_alone_and_leaves_no_output(input_dir, tmp_path, capsys):
    data = (input_dir / "00000.tar").read_bytes()
    (input_dir / "00000.tar").write_bytes(data[:1500])  # cut inside the first image
    output_dir = tmp_path / "out"
    assert _run(input_dir, output_dir) == 1
    assert sorted(p.name for p in output_dir.glob("*.tar*")) == ["00001.tar"]
    stats = _stats(output_dir)
    assert len(stats["this_run"]["shards_failed"]) == 1 and "00000.tar" in stats["this_run"]["shards_failed"][0]
    assert "failed:" in capsys.readouterr().err


def _error_of(argv):
    """The one stderr line of a command that must refuse its input (exit status 2)."""
    import contextlib
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(argv) == 2
    message = err.getvalue()
    assert message.startswith("error: ") and message.count("\n") == 1, message
    return message


def test_bad_input_is_one_error_line(input_dir, tmp_path):
    shards = f"{input_dir}/{{00000..00001}}.tar"
    assert "no input shard" in _error_of(["--input", f"{tmp_path}/nothing/*.tar", "--output", str(tmp_path / "o")])
    assert "concept bank file not found" in _error_of(
        ["--input", shards, "--output", str(tmp_path / "o"), "--concept-bank", str(tmp_path / "missing.txt")])
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert "not writable" in _error_of(["--input", shards, "--output", str(blocker / "out")])
    assert "pip install" in _error_of(
        ["--input", shards, "--output", str(tmp_path / "o"), "--spacy-model", "xx_no_such_model"])
    assert "--shard-index" in _error_of(
        ["--input", shards, "--output", str(tmp_path / "o"), "--shard-index", "2", "--num-shards", "2"])
    assert "overwrite" in _error_of(["--input", shards, "--output", str(input_dir)])


@pytest.mark.slow
def test_cli_error_exit_code_and_single_stderr_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "open_clip_simzss", "preprocess", "--input", f"{tmp_path}/*.tar",
         "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: no input shard matches {tmp_path}/*.tar"]
