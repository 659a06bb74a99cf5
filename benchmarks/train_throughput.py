"""Training throughput of SimZSS vs LiT through the real trainer and data pipeline: samples/s and their ratio.

    python benchmarks/train_throughput.py                         # CPU: simzss-tiny and simzss-vits14 (~2 min)
    python benchmarks/train_throughput.py --models simzss-tiny --steps 30 --repeats 2
    python benchmarks/train_throughput.py --device cuda --models simzss-vitb14 --batch-size 256 --workers 12

Paper (§4, Table 13; 8 MI250x dies, ViT-B/14, bf16): 3,957 img/s SimZSS vs 3,997 img/s LiT, i.e. a ratio of 0.99.

What runs: ``python -m training.main`` as a user would start it, once with ``--lambda-concept 0.05`` (SimZSS) and
once with ``--lambda-concept 0`` (LiT, which reads no concepts), with the same model, batch, precision, loader
workers and seed, on img2dataset-style WebDataset shards written here: 256x320 JPEGs (the size
``scripts/download_coco.sh`` stores), COCO-like captions and ``concepts.json`` precomputed with the project's
spaCy extractor (as ``simzss-preprocess`` writes them; ``--concept-source stored``). Shards are
resampled (``--dataset-resampled``) so a few of them feed any number of workers and steps.

What is measured: the trainer logs every step (``--log-every-n-steps 1``) with its samples/s, computed from the
wall time between the ends of consecutive steps, data loading included. The first ``--warmup-steps`` steps
(worker start-up, allocator and autotuning warm-up) are dropped; throughput = batch x steps / their total time.
Modes are interleaved across ``--repeats`` (SimZSS first, then LiT first, ...). The load average is printed:
on a shared machine other processes' load skews both modes, the ratio less than the absolute numbers. As a
cross-check that other processes hardly affect, the CPU time of each whole run (trainer and loader workers,
start-up included) is reported too, and its SimZSS/LiT ratio (on a GPU it mostly counts the data pipeline).
"""
import argparse
import io
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
NOUNS = ["dog", "cat", "bus", "horse", "car", "boat", "bird", "train", "person", "pizza", "table", "chair",
         "tennis racket", "traffic light", "giraffe", "elephant", "surfboard", "kite", "bench", "clock"]
ADJECTIVES = ["red", "small", "old", "wooden", "large", "white", "happy", "parked"]
PLACES = ["street", "grass", "beach", "snow", "kitchen", "field", "road", "water"]
VERBS = ["sitting on", "standing in", "next to", "walking along", "in front of", "near"]
DEFAULTS = {  # per model on the CPU: (batch size, measured steps, warm-up steps)
    "simzss-tiny": (16, 12, 3),
    "simzss-vits14": (8, 4, 2),
}
GPU_DEFAULTS = (256, 35, 5)  # steps + warm-up a multiple of the 10 GPU loader workers (epochs round up to it)
STEP_LINE = re.compile(r"Train Epoch: \d+ .* Data \(t\): ([0-9.]+) Batch \(t\): ([0-9.]+), ([0-9.e+-]+)/s, ")


def caption(rng):
    first, second = rng.sample(NOUNS, 2)
    return (f"a {rng.choice(ADJECTIVES)} {first} {rng.choice(VERBS)} a {second} on the {rng.choice(PLACES)}"
            + (" with a " + rng.choice(NOUNS) if rng.random() < 0.5 else ""))


def jpeg(rng, height=256, width=320):
    """A smooth image with mild noise: COCO-like JPEG size (tens of kB) and decode cost."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([np.sin(x / rng.uniform(10, 60) + c) * np.cos(y / rng.uniform(10, 60)) for c in range(3)], -1)
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 8, base.shape)
    pixels = np.clip(127 + 100 * base + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_shards(folder: Path, num_samples: int, num_shards: int, seed: int = 0) -> str:
    """img2dataset-style shards (jpg, txt, json) with ``concepts.json`` from the project's extractor."""
    from open_clip_simzss.concepts.extract import ConceptExtractor
    extractor = ConceptExtractor()
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = -(-num_samples // num_shards)
    key = 0
    for shard in range(num_shards):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for _ in range(min(per_shard, num_samples - key)):
                text = caption(rng)
                members = {"jpg": jpeg(rng), "txt": text.encode(),
                           "json": json.dumps({"key": f"{key:09d}", "caption": text}).encode(),
                           "concepts.json": json.dumps(extractor.annotate(text)).encode()}
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key:09d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                key += 1
    return str(folder / ("{00000..%05d}.tar" % (num_shards - 1)))


def run_trainer(args, model, lam, batch, steps, warmup, data, logs: Path, name: str, extra=()):
    argv = [sys.executable, "-m", "training.main", "--model", model, "--train-data", data, "--dataset-resampled",
            "--train-num-samples", str(batch * (steps + warmup)), "--batch-size", str(batch),
            "--workers", str(args.workers), "--epochs", "1", "--lr", "1e-4", "--warmup", "1",
            "--precision", args.precision, "--device", args.device, "--lambda-concept", str(lam),
            "--concept-source", "stored", "--logs", str(logs), "--name", name, "--log-every-n-steps", "1",
            "--seed", "0", "--save-frequency", "0", *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"training.main failed ({model}, lambda {lam}):\n{proc.stderr[-3000:]}")
    steps_logged = [tuple(float(g) for g in m.groups())
                    for m in map(STEP_LINE.search, (logs / name / "out.log").read_text().splitlines()) if m]
    history = [json.loads(line) for line in (logs / name / "history-rank0.jsonl").read_text().splitlines()]
    if len(steps_logged) != steps + warmup or len(history) != steps + warmup:
        sys.exit(f"expected {steps + warmup} logged steps, got {len(steps_logged)} ({model}, lambda {lam})")
    shutil.rmtree(logs / name / "checkpoints", ignore_errors=True)
    measured = steps_logged[warmup:]
    step_times = [batch / rate for _, _, rate in measured]  # rate = batch / wall time of the step (full digits)
    return {
        "samples_per_s": batch * len(measured) / sum(step_times),
        "median_step_s": statistics.median(step_times),
        "data_wait_share": sum(d for d, _, _ in measured) / sum(step_times),
        "concepts_per_batch": statistics.mean(h["num_concepts"] for h in history) if lam > 0 else 0,
        "losses": [round(h["loss"], 4) for h in history[:3]],
        "run_cpu_s": cpu_s,  # whole run (start-up included), trainer and loader workers: robust to others' load
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None,
                        help="default: simzss-tiny simzss-vits14 on the CPU, simzss-vitb14 on a GPU")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default=None,
                        help="training.main --precision; default amp (bf16 autocast on the CPU), amp_bf16 on a GPU")
    parser.add_argument("--batch-size", type=int, help="per process; default per model (see DEFAULTS)")
    parser.add_argument("--steps", type=int, help="measured steps per run; default per model")
    parser.add_argument("--warmup-steps", type=int, help="steps dropped at the start of each run")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default 1 on CPU, 10 on GPU)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode, interleaved")
    parser.add_argument("--samples", type=int, default=None, help="samples written (default: enough for one pass)")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the shards and logs (printed path)")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    args.models = args.models or (["simzss-vitb14"] if gpu else ["simzss-tiny", "simzss-vits14"])
    args.precision = args.precision or ("amp_bf16" if gpu else "amp")
    args.workers = args.workers if args.workers is not None else (10 if gpu else 1)

    plans = {}
    for model in args.models:
        batch, steps, warmup = GPU_DEFAULTS if gpu else DEFAULTS.get(model, (8, 4, 2))
        plans[model] = (args.batch_size or batch, args.steps or steps,
                        args.warmup_steps if args.warmup_steps is not None else warmup)
    num_samples = args.samples or min(2048, max(b * (s + w) for b, s, w in plans.values()))

    tmp = Path(tempfile.mkdtemp(prefix="simzss-throughput-"))
    try:
        t0 = time.time()
        data = write_shards(tmp / "shards", num_samples, num_shards=max(4, args.workers))
        print(f"# {num_samples} samples in {max(4, args.workers)} shards written in {time.time() - t0:.1f}s; "
              f"device {args.device}, precision {args.precision}, {args.workers} loader worker(s), "
              f"{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}", flush=True)
        results = []
        for model, (batch, steps, warmup) in plans.items():
            runs = {"simzss": [], "lit": []}
            for rep in range(args.repeats):
                order = [("simzss", 0.05), ("lit", 0.0)]
                for mode, lam in (order if rep % 2 == 0 else order[::-1]):
                    load = os.getloadavg()[0]
                    r = run_trainer(args, model, lam, batch, steps, warmup, data, tmp / "logs", f"{model}-{mode}-{rep}")
                    r["load_before"] = load
                    runs[mode].append(r)
                    print(f"  {model:15s} {mode:6s} run {rep}: {r['samples_per_s']:8.2f} samples/s "
                          f"(median step {r['median_step_s']:.3f}s, data wait {100 * r['data_wait_share']:.0f}%, "
                          f"{r['concepts_per_batch']:.0f} concepts/batch, run CPU time {r['run_cpu_s']:.1f}s, "
                          f"load {load:.2f})", flush=True)
            simzss = statistics.median(r["samples_per_s"] for r in runs["simzss"])
            lit = statistics.median(r["samples_per_s"] for r in runs["lit"])
            results.append({"model": model, "batch_size": batch, "steps": steps, "warmup_steps": warmup,
                            "simzss_samples_per_s": simzss, "lit_samples_per_s": lit, "ratio": simzss / lit,
                            "cpu_time_ratio": statistics.median(r["run_cpu_s"] for r in runs["simzss"])
                            / statistics.median(r["run_cpu_s"] for r in runs["lit"]),
                            "runs": runs})
        print(f"\n{'model':16s} {'batch':>5s} {'steps':>5s} {'SimZSS/s':>9s} {'LiT/s':>9s} {'SimZSS/LiT':>10s} "
              f"{'CPU time SimZSS/LiT':>20s}")
        for r in results:
            print(f"{r['model']:16s} {r['batch_size']:5d} {r['steps']:5d} {r['simzss_samples_per_s']:9.2f} "
                  f"{r['lit_samples_per_s']:9.2f} {r['ratio']:10.3f} {r['cpu_time_ratio']:20.3f}")
        print(f"paper (ViT-B/14, 8 MI250x dies, bf16): 3957 vs 3997 img/s, ratio 0.990; "
              f"load average after {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
        if args.output:
            Path(args.output).write_text(json.dumps({"device": args.device, "precision": args.precision,
                                                     "workers": args.workers, "results": results}, indent=2))
    finally:
        if args.keep:
            print(f"# kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
