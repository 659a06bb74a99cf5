"""What does the frozen-feature cache buy? Training samples/s of SimZSS with and without
``--cache-vision-features``, same model, data, batch and settings, through ``python -m training.main``.

    python benchmarks/feature_cache_speedup.py                          # CPU: simzss-vits14, batch 16
    python benchmarks/feature_cache_speedup.py --models simzss-vitb14 --device cuda --batch-size 256

The cached run first encodes every image once (timed separately: the cache is built once and reused by every
later epoch and run); its steps then read the tower's outputs from memory-mapped files instead of decoding,
resizing and encoding images. Goal on a GPU: >= 3x. Uses the shard writer and trainer runner of
``train_throughput.py``; warm-up steps are excluded.
"""
import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from train_throughput import run_trainer, write_shards


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["simzss-vits14"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default=None, help="default amp (bf16 autocast on the CPU), amp_bf16 on a GPU")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="measured steps per run")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()
    args.precision = args.precision or ("amp_bf16" if args.device.startswith("cuda") else "amp")
    samples = args.batch_size * (args.steps + args.warmup_steps)
    tmp = Path(tempfile.mkdtemp(prefix="simzss-cache-"))
    results = []
    try:
        data = write_shards(tmp / "shards", samples, num_shards=max(4, args.workers))
        print(f"# {samples} samples, device {args.device}, precision {args.precision}, batch {args.batch_size}, "
              f"load average before {os.getloadavg()[0]:.2f}", flush=True)
        for model in args.models:
            runs = {}
            for mode, extra in (("uncached", ()), ("cached", ("--cache-vision-features", str(tmp / "cache")))):
                start = time.time()
                runs[mode] = run_trainer(args, model, 0.05, args.batch_size, args.steps, args.warmup_steps, data,
                                         tmp / "logs", f"{model}-{mode}", extra)
                runs[mode]["run_wall_s"] = time.time() - start
                print(f"  {model:15s} {mode:9s} {runs[mode]['samples_per_s']:9.2f} samples/s "
                      f"(median step {runs[mode]['median_step_s']:.3f} s, run {runs[mode]['run_wall_s']:.0f} s "
                      "including start-up" + (" and the cache build" if mode == "cached" else "") + ")", flush=True)
            speedup = runs["cached"]["samples_per_s"] / runs["uncached"]["samples_per_s"]
            results.append({"model": model, "speedup": speedup, "runs": runs})
            print(f"  {model}: cached / uncached = {speedup:.2f}x (goal on a GPU: >= 3x)")
        if args.output:
            Path(args.output).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
