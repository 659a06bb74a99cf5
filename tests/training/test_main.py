"""``python -m training.main`` end to end on CPU with simzss-tiny and tiny shards with real JPEGs."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import webdataset as wds

from training.data import SampleDecoder
from tests.helpers.shards import write_shards
from training.main import cli

pytestmark = pytest.mark.slow  # processes, training or installs (make test-fast leaves it out)

BATCH = 8
NO_AUG = ["--aug-cfg", "scale=(1.0, 1.0)"]  # square images: the random resized crop is the whole image


@pytest.fixture(scope="module")
def shards(tmp_path_factory, extractor, annotated_shards):
    """2 shards x 8 samples, concepts preprocessed, plus a variant with a corrupt image."""
    root = tmp_path_factory.mktemp("shards")
    return {
        "clean": annotated_shards,
        "raw": write_shards(root / "raw", 2, BATCH),
        "one": write_shards(root / "one", 1, BATCH, annotate=extractor.annotate),
        # format version 1 (no provenance), with three bad rows per sample: past the end of text, negative id,
        # id outside the bank
        "old": write_shards(root / "old", 1, BATCH, annotate=lambda caption: old_record_with_bad_rows(
            extractor, caption)),
        # one shard of 3 x BATCH samples, 2 x BATCH of them corrupt: the sample shuffle decides where the good
        # ones are, and the one batch reads past at least one corrupt sample unless all 8 good ones come first
        # (probability 1 / C(24, 8) ~ 1e-6)
        "corrupt": write_shards(root / "corrupt", 1, 3 * BATCH, annotate=extractor.annotate,
                                corrupt_keys={f"{i:09d}" for i in range(3 * BATCH) if i % 3}),
    }


def old_record_with_bad_rows(extractor, caption):
    record = extractor.annotate(caption)
    del record["provenance"]
    bad = [{"text": "dog", "id": 0, "spans": [], "positions": [70]}, {"text": "dog", "id": -1, "positions": [2]},
           {"text": "dog", "id": extractor.bank.num_ids, "positions": [2]}]
    return {**record, "version": 1, "concepts": record["concepts"] + bad}


def run(tmp_path, name, data, *extra, samples=2 * BATCH):
    argv = ["--model", "simzss-tiny", "--train-data", data, "--train-num-samples", str(samples),
            "--batch-size", str(BATCH), "--workers", "1", "--lr", "2e-3", "--warmup", "1", "--wd", "0.0",
            "--logs", str(tmp_path / "logs"), "--name", name, "--seed", "0", "--log-every-n-steps", "1",
            *NO_AUG, *extra]
    assert cli(argv) == 0
    log_dir = tmp_path / "logs" / name
    history = [json.loads(line) for line in (log_dir / "history-rank0.jsonl").read_text().splitlines()]
    return log_dir, history


def test_loss_goes_down_and_checkpoint_resumes(tmp_path, shards):
    log_dir, history = run(tmp_path, "simzss", shards["clean"], "--epochs", "4", "--save-frequency", "1")
    losses = [h["loss"] for h in history]
    assert len(history) == 8 and all(h["num_concepts"] > 0 for h in history)
    assert all(h["concept_loss"] > 0 for h in history)
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    checkpoints = sorted(p.name for p in (log_dir / "checkpoints").glob("*.pt"))
    assert checkpoints == ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt", "epoch_4.pt"]
    ckpt = torch.load(log_dir / "checkpoints" / "epoch_4.pt", weights_only=True)
    assert ckpt["epoch"] == 4 and not any(k.startswith("module.") for k in ckpt["state_dict"])
    assert any(k.startswith("visual.trunk.") for k in ckpt["state_dict"])  # self-contained

    # resume: stop after epoch 2, then continue from it with the saved optimizer state
    (log_dir / "checkpoints" / "epoch_3.pt").unlink()
    (log_dir / "checkpoints" / "epoch_4.pt").unlink()
    saved = torch.load(log_dir / "checkpoints" / "epoch_2.pt", weights_only=True)
    (log_dir / "history-rank0.jsonl").unlink()
    _, resumed = run(tmp_path, "simzss", shards["clean"], "--epochs", "3", "--resume", "latest")
    assert [h["step"] for h in resumed] == [4, 5] and [h["epoch"] for h in resumed] == [2, 2]
    assert "resuming checkpoint" in (log_dir / "out.log").read_text()
    final = torch.load(log_dir / "checkpoints" / "epoch_3.pt", weights_only=True)
    steps = [s["step"] for s in final["optimizer"]["state"].values()]
    saved_steps = [s["step"] for s in saved["optimizer"]["state"].values()]
    assert all(float(a) == float(b) + 2 for a, b in zip(steps, saved_steps))


def test_lit_mode_needs_no_concepts(tmp_path, shards):
    _, history = run(tmp_path, "lit", shards["raw"], "--epochs", "1", "--lambda-concept", "0")
    assert all(h["concept_loss"] == 0.0 and h["loss"] == h["contrastive_loss"] for h in history)


def test_corrupt_sample_is_skipped_and_counted(tmp_path, shards):
    log_dir, history = run(tmp_path, "corrupt", shards["corrupt"], "--epochs", "1", samples=BATCH)
    assert len(history) == 1
    log = (log_dir / "out.log").read_text()
    skipped = int(re.search(r"Skipped samples: (\d+)", log).group(1))
    assert 1 <= skipped <= 2 * BATCH and f"{skipped} corrupt samples skipped" in log


def test_on_the_fly_concepts_equal_preprocessed(shards, extractor, tokenizer):
    def rows(pattern, force):
        decoder = SampleDecoder(lambda img: torch.zeros(1), tokenizer, with_concepts=True,
                                extractor_factory=lambda: extractor, force_on_the_fly=force)
        samples = wds.DataPipeline(wds.SimpleShardList(pattern), wds.tarfile_to_samples())
        return [r for _, _, r in decoder(samples)]
    preprocessed = rows(shards["clean"], force=False)
    assert len(preprocessed) == 2 * BATCH and all(preprocessed)
    assert rows(shards["clean"], force=True) == preprocessed
    assert rows(shards["raw"], force=False) == preprocessed  # no concepts.json: extracted on the fly


@pytest.mark.parametrize("argv, message", [
    (["--accum-freq", "2"], "--accum-freq"),
    (["--siglip"], "--siglip"),
    (["--model", "ViT-B-32"], "not a SimZSS model"),
    (["--horovod"], "--horovod only trains LiT"),
    (["--torchcompile"], "--torchcompile is not supported"),
])
def test_flag_combinations_that_cannot_work_are_refused(argv, message, capsys, tmp_path):
    assert cli(["--model", "simzss-tiny", "--logs", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1


def test_two_processes_give_the_losses_of_one(tmp_path, shards):
    """Global batch = both shards; torchrun with 2 gloo processes vs one process with twice the batch."""
    common = ["--model", "simzss-tiny", "--train-data", shards["clean"], "--train-num-samples", str(2 * BATCH),
              "--workers", "1", "--lr", "2e-3", "--warmup", "1", "--epochs", "3", "--seed", "0",
              "--precision", "fp32",  # the default "amp" autocasts to bf16 on CPU
              "--gather-with-grad", "--logs", str(tmp_path / "logs"), *NO_AUG]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "training.main", *common, "--batch-size", str(2 * BATCH),
                          "--name", "one"], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    # "--" ends torchrun's own options: torch 2.14's torchrun takes "--logs" for its "--logs-specs"
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29533", "-m", "--", "training.main", *common, "--batch-size", str(BATCH),
                          "--name", "two"], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]

    def losses(name):
        lines = (tmp_path / "logs" / name / "history-rank0.jsonl").read_text().splitlines()
        return [(h["contrastive_loss"], h["concept_loss"]) for h in map(json.loads, lines)]
    single, double = losses("one"), losses("two")
    assert len(single) == len(double) == 3
    # Tolerance 1e-4: float32 sums in another order, over 3 AdamW steps.
    for (c1, l1), (c2, l2) in zip(single, double):
        assert c1 == pytest.approx(c2, abs=1e-4) and l1 == pytest.approx(l2, abs=1e-4)
    assert single[0] != single[-1]  # the model did train


def test_imagenet_zero_shot_evaluation_during_training(tmp_path, shards, monkeypatch):
    """--imagenet-val: OpenCLIP's zero-shot ImageNet evaluation runs on the SimZSS model after the epoch."""
    import open_clip_train.zero_shot
    from PIL import Image
    # 2 of OpenAI's 80 prompts: the 1,000-class classifier from 80,000 prompts took ~45 s of this test on 2 cores
    monkeypatch.setattr(open_clip_train.zero_shot, "OPENAI_IMAGENET_TEMPLATES",
                        open_clip_train.zero_shot.OPENAI_IMAGENET_TEMPLATES[:2])
    for i, wnid in enumerate(["n01440764", "n01443537"]):  # the first two ImageNet classes, in label order
        (tmp_path / "imagenet" / wnid).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (40, 40), (60 * i + 20 * j, 100, 150)).save(tmp_path / "imagenet" / wnid / f"{j}.jpg")
    log_dir, _ = run(tmp_path, "imagenet", shards["clean"], "--epochs", "1", "--precision", "fp32", "--imagenet-val",
                     str(tmp_path / "imagenet"), samples=BATCH)
    results = json.loads((log_dir / "checkpoints" / "results.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= results["imagenet-zeroshot-val-top1"] <= 1.0
    assert results["imagenet-zeroshot-val-top1"] <= results["imagenet-zeroshot-val-top5"]


def test_same_seed_same_run(tmp_path, shards):
    """The sample shuffle is seeded: two runs with the same --seed see the same batches and losses."""
    _, first = run(tmp_path, "a", shards["clean"], "--epochs", "2", "--precision", "fp32")
    _, second = run(tmp_path, "b", shards["clean"], "--epochs", "2", "--precision", "fp32")
    assert [h["loss"] for h in first] == pytest.approx([h["loss"] for h in second], abs=1e-6)
    _, other = run(tmp_path, "c", shards["clean"], "--epochs", "2", "--precision", "fp32", "--seed", "1")
    assert [h["loss"] for h in other] != pytest.approx([h["loss"] for h in first], abs=1e-6)


def test_release_variant_is_recorded_and_a_mismatched_resume_refused(tmp_path, shards, capsys):
    log_dir, history = run(tmp_path, "release", shards["clean"], "--epochs", "1", "--simzss-variant", "release")
    assert all(h["concept_loss"] > 0 for h in history)
    assert "simzss_variant: release\n" in (log_dir / "params.txt").read_text()
    assert "SimZSS variant: release" in (log_dir / "out.log").read_text()
    ckpt = torch.load(log_dir / "checkpoints" / "epoch_1.pt", weights_only=True)
    assert ckpt["simzss_variant"] == "release"
    argv = ["--model", "simzss-tiny", "--train-data", shards["clean"], "--train-num-samples", str(2 * BATCH),
            "--batch-size", str(BATCH), "--workers", "1", "--logs", str(tmp_path / "logs"), "--name", "release",
            "--epochs", "2", "--resume", "latest", *NO_AUG]
    capsys.readouterr()
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the run's own log lines
    assert err.startswith("error: --resume") and err.endswith("was trained with --simzss-variant release, not paper")


def test_dry_run_prints_the_recipe_without_data(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.delenv("SIMZSS_DENOISER_WEIGHTS", raising=False)
    argv = ["--model", "simzss-vitb14-dvt", "--simzss-variant", "release", "--dry-run",
            "--train-data", "/nonexistent/{00000..00295}.tar", "--train-num-samples", "591753",
            "--batch-size", "2048", "--lr", "1.92e-3", "--warmup", "25", "--epochs", "7", "--precision", "amp_bf16"]
    assert cli(argv) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.strip().splitlines())
    assert lines["model"] == "simzss-vitb14-dvt" and lines["simzss variant"] == "release"
    assert lines["lambda (concept loss weight)"] == "0.05" and lines["tau (patch softmax)"] == "0.1"
    assert lines["T (concept classifier)"] == "0.07"
    assert lines["batch"] == "2048 per process x 8 processes = 16384 global"
    assert lines["lr"].startswith("0.00192 (--lr; the authors' flat --lr equivalent: 3e-05 (x 16384 / 256))")
    assert lines["schedule"].startswith("cosine, warm-up 25 steps") and "252 steps: 36 per epoch" in lines["schedule"]
    assert lines["epochs"] == "7" and lines["precision"] == "amp_bf16"
    assert lines["denoiser weights"].startswith("hf-hub:jjiaweiyang/DVT/voc_denoised/")
    monkeypatch.setenv("SIMZSS_DENOISER_WEIGHTS", "/data/dvt.pth")
    assert cli(argv + ["--lr", "1e-3"]) == 0
    out = capsys.readouterr().out
    assert "denoiser weights: /data/dvt.pth ($SIMZSS_DENOISER_WEIGHTS)" in out and "lr: 0.001 (--lr;" in out
    # a denoiser file for a model without a denoiser is a mistake
    assert cli(["--model", "simzss-vitb14", "--dry-run", "--denoiser-weights", "/data/dvt.pth"]) == 2
    assert "has no DVT denoiser" in capsys.readouterr().err


def test_decoder_drops_and_counts_bad_concept_rows(extractor, tokenizer):
    caption = "a red dog on the grass"  # 6 words: <end_of_text> at position 7
    good = extractor.annotate(caption)
    assert [c["positions"] for c in good["concepts"]] == [[3], [6]]
    rows = good["concepts"] + [
        {"id": 1, "positions": [7]},  # the <end_of_text> token itself
        {"id": 1, "positions": [2, 12]},  # past it (padding)
        {"id": 1, "positions": [0]},  # the start token
        {"id": 1, "positions": []},
        {"id": -1, "positions": [3]},
        {"id": extractor.bank.num_ids, "positions": [3]},
    ]
    records = [json.dumps({**good, "concepts": rows}).encode(), b"{not json"]
    decoder = SampleDecoder(lambda img: torch.zeros(1), tokenizer, with_concepts=True,
                            num_concept_ids=extractor.bank.num_ids)
    tokens = tokenizer([caption])[0]
    kept = [decoder.concept_rows({"concepts.json": record}, caption, tokens) for record in records]
    assert kept == [[(c["id"], c["positions"]) for c in good["concepts"]], []]
    assert decoder.counter.bad_concepts == 6 + 1


def test_missing_bank_file_is_refused_before_data_is_read(tmp_path, capsys):
    argv = ["--model", "simzss-tiny", "--train-data", str(tmp_path / "no-such-shards/{00000..00001}.tar"),
            "--train-num-samples", "8", "--logs", str(tmp_path / "logs"), "--name", "x",
            "--concept-bank", str(tmp_path / "missing.txt")]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err == f"error: concept bank file not found: {tmp_path / 'missing.txt'}\n"
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("flags, message", [
    (["--concept-bank", "none"], "another concept bank default (sha256 {digest}) at preprocessing vs --concept-bank "
                                 "none (open bank): train with --concept-source spacy"),
    (["--concept-bank", "BANK"], "another concept bank default (sha256 {digest}) at preprocessing vs --concept-bank "
                                 "BANK (sha256 "),
    (["--spacy-model", "en_core_web_trf"], "another spaCy model en_core_web_sm {version} at preprocessing vs "
                                           "--spacy-model en_core_web_trf"),
    (["--concept-source", "stored", "--train-data", "RAW"], "--concept-source stored: the first sample of "),
])
def test_concepts_made_with_other_flags_are_refused_in_one_line(flags, message, tmp_path, shards, extractor,
                                                                capsys):
    bank_file = tmp_path / "bank.txt"
    bank_file.write_text("dog\ncat\n", encoding="utf-8")
    flags = [str(bank_file) if f == "BANK" else shards["raw"] if f == "RAW" else f for f in flags]
    message = message.replace("BANK", str(bank_file)).format(
        digest=extractor.bank.sha256[:12], version=extractor.nlp.meta["version"])
    argv = ["--model", "simzss-tiny", "--train-data", shards["one"], "--train-num-samples", str(BATCH),
            "--batch-size", str(BATCH), "--workers", "1", "--logs", str(tmp_path / "logs"), "--name", "x", *flags]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert "re-run simzss-preprocess" in err and not (tmp_path / "logs").exists()


def test_mismatch_exits_non_zero_from_the_command_line(tmp_path, shards):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "training.main", "--model", "simzss-tiny", "--train-data",
                             shards["one"], "--train-num-samples", str(BATCH), "--batch-size", str(BATCH),
                             "--logs", str(tmp_path / "logs"), "--concept-bank", "none"],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: the concepts.json of ") and len(result.stderr.splitlines()) == 1
    assert "--concept-bank none (open bank)" in result.stderr


def test_concept_source_spacy_re_extracts_with_the_flags(tmp_path, shards):
    """The stored concepts (default bank) would give several concepts per caption; a bank of "bus" gives one per
    batch: the one caption of the shard that has a bus."""
    bank_file = tmp_path / "bus.txt"
    bank_file.write_text("bus\n", encoding="utf-8")
    log_dir, history = run(tmp_path, "spacy", shards["one"], "--epochs", "1", "--concept-bank", str(bank_file),
                           "--concept-source", "spacy", samples=BATCH)
    assert [h["num_concepts"] for h in history] == [1]  # the stored ones: dog, grass, bus, road, ...
    assert "extracted on the fly with --concept-bank " in (log_dir / "out.log").read_text()


def test_old_concepts_json_is_accepted_with_a_warning_and_bad_rows_counted(tmp_path, shards):
    log_dir, history = run(tmp_path, "old", shards["old"], "--epochs", "1", samples=BATCH)
    assert len(history) == 1 and history[0]["num_concepts"] > 0
    log = (log_dir / "out.log").read_text()
    assert "have no provenance (format version 1): their concept bank and spaCy model cannot be checked" in log
    assert f"{3 * BATCH} bad concepts ignored so far" in log


def test_missing_spacy_model_for_on_the_fly_extraction_is_refused_in_one_line(tmp_path, shards, capsys):
    argv = ["--model", "simzss-tiny", "--train-data", shards["raw"], "--train-num-samples", str(BATCH),
            "--batch-size", str(BATCH), "--logs", str(tmp_path / "logs"), "--spacy-model", "xx_no_such_model"]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: spaCy model 'xx_no_such_model' is not installed; install it with: ")
    assert len(err.splitlines()) == 1 and not (tmp_path / "logs").exists()
