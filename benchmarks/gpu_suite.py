"""The GPU benchmark suite: one command, one prepared run of every figure the GPU goals are about.

    python benchmarks/gpu_suite.py --device cuda     # simzss-vitb14 at 224, bf16: <= 6 min on one H100/H200
    python benchmarks/gpu_suite.py --smoke           # the same code paths on CPU, simzss-tiny, tiny sizes: < 1 min

Random weights, synthetic data (in memory; the trainer's shards and feature cache on tmpfs when there is room).
Sections, each printed as it finishes:

1. One training step (forward, loss, backward, AdamW; bf16 autocast), SimZSS vs LiT, at per-GPU batch 256 and
   1,024 (halved on out-of-memory until it fits): img/s, peak CUDA memory, their ratios (goals: time <= 1.02,
   memory <= 1.10 x LiT); and the SimZSS-only operations timed alone, forward + backward: the text concepts
   (Eq. 1-2), the visual concepts (Eq. 3-4), the concept classifier and its cross-entropy (Eq. 7-9).
2. Text-tower trimming (the tower runs only up to the batch's last end-of-text token) on and off.
3. The cached training step (the frozen tower's outputs given, as ``--cache-vision-features`` does): its time,
   and its model FLOP utilisation = (text tower + loss FLOPs of one forward + backward, counted by
   ``torch.utils.flop_counter.FlopCounterMode``) / step time / the GPU's peak dense bf16 (``PEAK_BF16_TFLOPS``
   or ``--peak-tflops``). Goal >= 40 %.
4. Zero-shot segmentation images/s at VOC (500x375) and Cityscapes (2048x1024) sizes and the share of
   everything that is not the vision tower's forward (``segment_throughput.py``'s measurement; goal <= 10 %).
5. The trainer end to end: ``python -m training.main`` on WebDataset shards (``train_throughput.py``'s writer
   and runner), with and without ``--cache-vision-features``: samples/s, their ratio (goal >= 3x), and the share
   of step time spent waiting for the loader (the trainer's own ``Data (t)`` / ``Batch (t)`` log figures).

What would waste device time is kept off it: the shards are written by a background process while sections 1-4
run; every in-process section shares one model built once on the host; the trainer runs last, twice, each a
few hundred steps. Timings are medians after warm-up steps, with CUDA events on a GPU.

Results: JSON and a markdown table (GPU, torch/CUDA versions, load average, date) written to ``--output``
(a path prefix; default ``benchmarks/results/gpu_suite-<gpu>-<date>``; a smoke run defaults to a temporary
folder, as its figures are not measurements). Both files are rewritten after every section, so a run cut short
keeps what it measured; a section that fails is recorded as such, the others still run, and the exit status is 1.
"""
import argparse
import copy
import gc
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from functools import partial
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import open_clip_simzss  # noqa: E402
from open_clip_simzss import SimZSSLoss, concept_classification_loss, pool_visual_concepts  # noqa: E402
from _common import Clock, run_case, time_tower  # noqa: E402
from segment_throughput import CASES  # noqa: E402
from step_overhead import make_step, synthetic_batch  # noqa: E402
from train_throughput import run_trainer, write_shards  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LAMBDA_CONCEPT = 0.05
LOADER_BOUND = 0.1  # a run whose data time exceeds this share of its step time is called loader-bound
# Dense (no sparsity) bf16 tensor-core peak per device, TFLOP/s, from the vendors' spec sheets. Matched as a
# substring of torch.cuda.get_device_name(), longest key first; --peak-tflops overrides.
PEAK_BF16_TFLOPS = {
    "H200": 989.0, "H100": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "A100": 312.0, "B200": 2250.0,
    "L40S": 362.0, "L40": 181.0, "L4": 121.0, "MI250X": 191.5, "MI300X": 1307.0,  # MI250X: one die (GCD)
}
PLANS = {
    # batch_sizes: the training-step batches; warmup/repeats: untimed and timed calls per measurement;
    # train_*: the trainer runs (per-process batch, measured and dropped steps; steps + warm-up is rounded up to
    # a multiple of the loader workers, as the loader does); samples/shards: what the shard writer writes
    # (resampled: a few thousand distinct samples feed any number of steps); seg_images: timed images per case;
    # segmenter: SegmentationProtocol fields (the smoke run scales the protocol's 448 px by 1/4, like its model's
    # 112 px input: the same windows per image, 1/16 of the tokens each).
    "full": dict(model="simzss-vitb14", batch_sizes=(256, 1024), warmup=3, repeats=10, train_batch=256,
                 train_steps=200, train_warmup=None, samples=2048, seg_images=20, templates="openai80", segmenter={}),
    "smoke": dict(model="simzss-tiny", batch_sizes=(2, 4), warmup=1, repeats=2, train_batch=4, train_steps=2,
                  train_warmup=1, samples=8, seg_images=1, templates="simple7",
                  segmenter=dict(short_side=112, window=112, stride=56)),
}
START = time.perf_counter()


def log(message):
    print(f"[{time.perf_counter() - START:6.1f}s] {message}", flush=True)


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def release(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def median_seconds(fn, device, warmup, repeats):
    """Median time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones. On a GPU each call is
    bracketed by CUDA events (no host synchronisation between calls other than ``fn``'s own)."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) / 1000 for start, end in events)


def largest_fitting(measure, batch_size, device):
    """``(batch, measure(batch))`` for the largest ``batch <= batch_size`` reached by halving on out-of-memory."""
    while batch_size >= 1:
        try:
            return batch_size, measure(batch_size)
        except torch.cuda.OutOfMemoryError:
            pass  # released outside the handler, once the traceback's frames are gone
        release(device)
        log(f"  out of memory at batch {batch_size}: trying {batch_size // 2}")
        batch_size //= 2
    raise RuntimeError("out of memory even at batch 1")


class Suite:
    def __init__(self, args, plan):
        self.args, self.plan = args, plan
        self.device = torch.device(args.device)
        torch.manual_seed(0)
        self.master = open_clip_simzss.create_model(plan["model"])  # on the host; each section takes a copy
        self.tokenizer = open_clip_simzss.get_tokenizer(plan["model"])
        self.image_size = self.master.visual.image_size[0]
        self.host_batches = {}  # batch size -> synthetic batch on the host (1,024 images take a second to draw)

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def model(self, train=True):
        model = copy.deepcopy(self.master).to(self.device)
        return model.train(train)

    def batch(self, batch_size):
        if batch_size not in self.host_batches:
            self.host_batches[batch_size] = synthetic_batch(self.tokenizer, batch_size, self.image_size)
        return {k: v.to(self.device) for k, v in self.host_batches[batch_size].items()}

    def time(self, fn):
        return median_seconds(fn, self.device, self.plan["warmup"], self.plan["repeats"])

    # --- 1. training step, SimZSS vs LiT, and the SimZSS-only operations --------------------------------------
    def training_step(self, batch_size):
        batch = self.batch(batch_size)
        row = {"batch_size": batch_size, "concepts": int(batch["concept_ids"].numel())}
        for name, lam in (("LiT", 0.0), ("SimZSS", LAMBDA_CONCEPT)):
            model = self.model()
            step = make_step(model, lam, batch, self.device, "bf16")
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = self.time(step)
            row[name] = {"step_s": seconds, "img_per_s": batch_size / seconds,
                         # model, gradients, AdamW state, batch and activations: this mode alone is on the device
                         "peak_mib": torch.cuda.max_memory_allocated() / 2 ** 20 if self.device.type == "cuda"
                         else None}
            if name == "SimZSS":
                row["concept_ops"] = self.concept_ops(model, batch, seconds)
            del model, step
            release(self.device)
        row["time_ratio"] = row["SimZSS"]["step_s"] / row["LiT"]["step_s"]
        if self.device.type == "cuda":
            row["memory_ratio"] = row["SimZSS"]["peak_mib"] / row["LiT"]["peak_mib"]
        return row

    def concept_ops(self, model, batch, simzss_step_s):
        """The SimZSS-only operations, each forward + backward on its own, on this batch's real tensors."""
        loss_fn = SimZSSLoss(lambda_concept=LAMBDA_CONCEPT)
        index, mask, ids = batch["concept_image_index"], batch["concept_token_mask"], batch["concept_ids"]
        with torch.no_grad(), self.autocast():
            _, dense = model.visual.forward_tokens(batch["image"])
            _, tokens = model._encode_text_both(batch["text"])
            text_concepts = model.encode_text_concepts(tokens, index, mask)
            patches = dense.flatten(1, 2)
            visual_concepts = pool_visual_concepts(patches, index, text_concepts, loss_fn.tau)
        leaves = [t.detach().requires_grad_(True) for t in (tokens, text_concepts, visual_concepts)]
        tokens, text_concepts, visual_concepts = leaves

        def backward(out):
            out.float().sum().backward()
            for leaf in leaves:
                leaf.grad = None

        def eq1_2():  # c̃_t = g(mean of the concept's word tokens)
            with self.autocast():
                out = model.encode_text_concepts(tokens, index, mask)
            backward(out)

        def eq3_4():  # c_v: softmax over the concept's own image's patches (the patches carry no gradient)
            with self.autocast():
                out = pool_visual_concepts(patches, index, text_concepts, loss_fn.tau)
            backward(out)

        def eq7_9():  # classifier of the batch's unique concepts, logits, cross-entropy
            with self.autocast():
                out = concept_classification_loss(visual_concepts, text_concepts, ids, loss_fn.concept_temperature)[0]
            backward(out)

        ops = {name: self.time(fn) for name, fn in (("eq1_2", eq1_2), ("eq3_4", eq3_4), ("eq7_9", eq7_9))}
        ops["share_of_step"] = sum(ops.values()) / simzss_step_s
        return ops

    # --- 2. text-tower trimming ---------------------------------------------------------------------------------
    def text_trimming(self, batch_size):
        model, text = self.model(), self.batch(batch_size)["text"]

        def text_pass(trim):
            def run():
                with self.autocast():
                    features, tokens = model._encode_text_both(text, trim=trim)
                (features.float().mean() + tokens.float().mean()).backward()
                model.zero_grad(set_to_none=True)
            return run
        times = {"on": self.time(text_pass(True)), "off": self.time(text_pass(False))}
        kept = int(text.argmax(dim=-1).max()) + 1  # the end-of-text token has the largest id
        return {"batch_size": batch_size, "can_trim": model.can_trim_text, "tokens_kept": kept,
                "context_length": text.shape[1], "on_s": times["on"], "off_s": times["off"],
                "speedup": times["off"] / times["on"]}

    # --- 3. the cached step and its model FLOP utilisation ------------------------------------------------------
    def cached_step(self, batch_size, uncached_img_per_s, peak_tflops):
        model, batch = self.model(), self.batch(batch_size)
        with torch.no_grad(), self.autocast():
            global_token, dense = model.visual.forward_tokens(batch.pop("image"))
        # The feature cache hands the trainer float32 tensors (stored as float16).
        batch.update(image_features=global_token.float(), patch_tokens=dense.flatten(1, 2).float())
        del global_token, dense
        step = make_step(model, LAMBDA_CONCEPT, batch, self.device, "bf16")
        seconds = self.time(step)
        with FlopCounterMode(display=False) as counter:  # matmul-class ops of forward + backward
            step()
        flops = counter.get_total_flops()
        result = {"batch_size": batch_size, "text_positions": int(batch["text"].argmax(dim=-1).max()) + 1,
                  "step_s": seconds, "samples_per_s": batch_size / seconds,
                  "speedup_vs_uncached_step": batch_size / seconds / uncached_img_per_s if uncached_img_per_s
                  else None, "flops_per_step": flops,
                  "tflop_per_s": flops / seconds / 1e12, "peak_tflops": peak_tflops,
                  "mfu": flops / seconds / (peak_tflops * 1e12) if peak_tflops else None}
        del model, batch, step
        release(self.device)
        return result

    # --- 4. zero-shot segmentation ------------------------------------------------------------------------------
    def segmentation(self):
        model = self.model(train=False)
        clock = Clock(self.device)
        tower = time_tower(model, clock)
        results = []
        for name, size, classes, split, with_background in CASES:
            results.append(run_case(model, self.tokenizer, clock, tower, name, size, classes, split, with_background,
                                    self.plan["seg_images"], self.plan["templates"], window_batch_size=4,
                                    **self.plan["segmenter"]))
            r = results[-1]
            log(f"  {name}: {r['images_per_s']:.2f} img/s, non-backbone share {100 * r['overhead_share']:.1f} %")
        del model
        release(self.device)
        return results


# --- 5. the trainer end to end ----------------------------------------------------------------------------------
def data_folder(needed_bytes):
    """tmpfs when it has ample room (shards, the feature cache and the loader's shared memory all live there)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 4 * needed_bytes:
        return Path(tempfile.mkdtemp(prefix="simzss-suite-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="simzss-suite-"))


def start_shard_writer(folder, samples, shards):
    """Write the shards in a background process (JPEG encoding and concept extraction are CPU work that must
    not hold up the device sections); ``finish_shard_writer`` waits for it and returns the shard spec."""
    cmd = [sys.executable, __file__, "--write-shards", str(folder), str(samples), str(shards)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_shard_writer(proc):
    out, err = proc.communicate()
    if proc.returncode != 0:
        fail(f"writing the synthetic shards failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    return out.strip().splitlines()[-1]


def trainer_runs(args, plan, data, folder):
    workers = args.workers
    warmup = plan["train_warmup"] if plan["train_warmup"] is not None else 2 * workers  # every worker's first batch
    total = math.ceil((plan["train_steps"] + warmup) / workers) * workers
    steps, batch = total - warmup, plan["train_batch"]
    runner_args = SimpleNamespace(workers=workers, precision="amp_bf16", device=args.device)
    runs = {}
    for mode, extra in (("uncached", ()), ("cached", ("--cache-vision-features", str(folder / "cache")))):
        log(f"  training.main {mode}: {steps} + {warmup} warm-up steps of {batch}, {workers} loader workers")
        start = time.perf_counter()
        run = run_trainer(runner_args, plan["model"], LAMBDA_CONCEPT, batch, steps, warmup, data, folder / "logs",
                          f"suite-{mode}", extra)
        run["run_wall_s"] = time.perf_counter() - start  # start-up (and the cache build) included
        runs[mode] = run
        log(f"  {mode}: {run['samples_per_s']:.1f} samples/s, waiting for data "
            f"{100 * run['data_wait_share']:.0f} % of the step time, run {run['run_wall_s']:.0f} s")
    return {"batch_size": batch, "steps": steps, "warmup_steps": warmup, "workers": workers, "runs": runs,
            "speedup": runs["cached"]["samples_per_s"] / runs["uncached"]["samples_per_s"]}


# --- report -----------------------------------------------------------------------------------------------------
def environment(args):
    cuda = args.device.startswith("cuda")
    name = torch.cuda.get_device_name(torch.device(args.device)) if cuda else f"CPU ({platform.processor() or 'host'})"
    return {"device": args.device, "gpu": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None, "python": platform.python_version(),
            "device_memory_gib": torch.cuda.get_device_properties(torch.device(args.device)).total_memory / 2 ** 30
            if cuda else None,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_before": os.getloadavg()[0]}


def peak_tflops(args, gpu_name):
    """(peak dense bf16 TFLOP/s, where it came from) or (None, reason)."""
    if args.peak_tflops:
        return args.peak_tflops, "--peak-tflops"
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if args.device.startswith("cuda") and key.lower() in gpu_name.lower():
            return PEAK_BF16_TFLOPS[key], f"table ({key})"
    return None, "unknown device: pass --peak-tflops"


def collect_ratios(result):
    """Every ratio of the run, flat (what the acceptance goals are stated on)."""
    ratios = {}
    for row in result.get("training_step", []):
        ratios[f"step_time_simzss_over_lit_b{row['batch_size']}"] = row["time_ratio"]
        if "memory_ratio" in row:
            ratios[f"step_memory_simzss_over_lit_b{row['batch_size']}"] = row["memory_ratio"]
    if "text_trimming" in result:
        ratios["text_trim_speedup"] = result["text_trimming"]["speedup"]
    if "cached_step" in result:
        if result["cached_step"]["speedup_vs_uncached_step"] is not None:
            ratios["cached_step_speedup"] = result["cached_step"]["speedup_vs_uncached_step"]
        if result["cached_step"]["mfu"] is not None:
            ratios["cached_step_mfu"] = result["cached_step"]["mfu"]
    if "trainer" in result:
        ratios["trainer_cached_over_uncached"] = result["trainer"]["speedup"]
    return ratios


def ms(seconds):
    return f"{1000 * seconds:.2f}"


def pct(share):
    return f"{100 * share:.1f} %"


def md_training_step(rows):
    lines = ["| batch | LiT img/s | SimZSS img/s | time ratio (goal <= 1.02) | LiT peak MiB | SimZSS peak MiB "
             "| memory ratio (goal <= 1.10) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = (f"{r['LiT']['peak_mib']:.0f} | {r['SimZSS']['peak_mib']:.0f} | {r['memory_ratio']:.3f}"
               if "memory_ratio" in r else "n/a (CPU) | n/a | n/a")
        lines.append(f"| {r['batch_size']} | {r['LiT']['img_per_s']:.1f} | {r['SimZSS']['img_per_s']:.1f} | "
                     f"{r['time_ratio']:.3f} | {mem} |")
    lines += ["", "SimZSS-only operations, forward + backward, each timed alone (ms):", "",
              "| batch | concepts | Eq. 1-2 text concepts | Eq. 3-4 visual concepts | Eq. 7-9 classifier + CE "
              "| sum, share of the SimZSS step |", "|---|---|---|---|---|---|"]
    for r in rows:
        o = r["concept_ops"]
        lines.append(f"| {r['batch_size']} | {r['concepts']} | {ms(o['eq1_2'])} | {ms(o['eq3_4'])} | "
                     f"{ms(o['eq7_9'])} | {pct(o['share_of_step'])} |")
    return lines


def md_text_trimming(t):
    return ["| batch | positions run (trimmed / full) | trimmed ms | full ms | speedup |", "|---|---|---|---|---|",
            f"| {t['batch_size']} | {t['tokens_kept']} / {t['context_length']} | {ms(t['on_s'])} | "
            f"{ms(t['off_s'])} | {t['speedup']:.2f}x |"]


def md_cached_step(c):
    speedup = "n/a" if c["speedup_vs_uncached_step"] is None else f"{c['speedup_vs_uncached_step']:.2f}x"
    return ["| batch | step ms | samples/s | vs the uncached SimZSS step | GFLOP per step (fwd + bwd) | TFLOP/s "
            "| MFU (goal >= 40 %) |", "|---|---|---|---|---|---|---|",
            f"| {c['batch_size']} | {ms(c['step_s'])} | {c['samples_per_s']:.0f} | {speedup} | "
            f"{c['flops_per_step'] / 1e9:.1f} | {c['tflop_per_s']:.2f} | "
            f"{pct(c['mfu']) if c['mfu'] is not None else 'n/a (peak unknown)'} |"]


def md_segmentation(rows):
    lines = ["| case | windows | classes | img/s | vision tower s/img | non-backbone share (goal <= 10 %) "
             "| text classifier s (once) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['windows_per_image']} | {r['classes']} | {r['images_per_s']:.2f} | "
                     f"{r['median_tower_s_per_image']:.4f} | {pct(r['overhead_share'])} | "
                     f"{r['classifier_build_s']:.2f} |")
    return lines


def md_trainer(tr):
    lines = [f"Batch {tr['batch_size']}, {tr['steps']} measured steps after {tr['warmup_steps']}, "
             f"{tr['workers']} loader workers. Data time: waiting for the loader plus the host-to-device copy.", "",
             "| mode | samples/s | median step ms | data time share | run wall s (start-up included) |",
             "|---|---|---|---|---|"]
    for mode, run in tr["runs"].items():
        lines.append(f"| {mode} | {run['samples_per_s']:.1f} | {ms(run['median_step_s'])} | "
                     f"{pct(run['data_wait_share'])} | {run['run_wall_s']:.0f} |")
    lines += ["", f"Cached / uncached: **{tr['speedup']:.2f}x** (goal >= 3x)."]
    lines += [f"The loader is the bottleneck of the {mode} run: {pct(run['data_wait_share'])} of its step time is "
              "data time." for mode, run in tr["runs"].items() if run["data_wait_share"] > LOADER_BOUND]
    return lines


SECTIONS = [  # result key, title, markdown renderer; in the order they run
    ("training_step", "One training step (forward, loss, backward, AdamW), SimZSS vs LiT", md_training_step),
    ("text_trimming", "Text-tower trimming (forward + backward of the text tower)", md_text_trimming),
    ("cached_step", "Cached training step (the frozen tower's outputs given) and model FLOP utilisation",
     md_cached_step),
    ("segmentation", "Zero-shot segmentation (random weights)", md_segmentation),
    ("trainer", "Trainer end to end (`python -m training.main`, WebDataset shards)", md_trainer),
]


def markdown(result):
    env, plan = result["environment"], result["plan"]
    load_after = f"{env['load_average_after']:.2f}" if "load_average_after" in env else "n/a"
    lines = [f"# GPU suite: {plan['model']} at {result['image_size']} px{' (smoke run)' if result['smoke'] else ''}",
             "", "| | |", "|---|---|",
             f"| date | {result['date']} |", f"| device | {env['gpu']} (`{env['device']}`"
             + (f", {env['device_memory_gib']:.0f} GiB" if env["device_memory_gib"] else "") + ") |",
             f"| torch / CUDA / cuDNN | {env['torch']} / {env['cuda']} / {env['cudnn']} |",
             f"| CPUs, load average (1 min) before / after | {env['cpus']}, {env['load_average_before']:.2f} / "
             f"{load_after} |",
             "| precision | bf16 autocast (training step; trainer `--precision amp_bf16`); segmentation: the "
             "library's default |",
             f"| peak dense bf16 | {env['peak_tflops'] or 'n/a'}"
             + (" TFLOP/s" if env["peak_tflops"] else "") + f" ({env['peak_source']}) |",
             f"| wall time | {result['wall_s']:.0f} s |", f"| command | `{result['command']}` |"]
    for key, title, render in SECTIONS:
        lines += ["", f"## {title}", ""]
        if key in result:
            lines += render(result[key])
        else:
            lines.append(f"Not measured: {result.get('errors', {}).get(key, 'the run stopped before it')}")
    lines += ["", "## Ratios", "", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in result["ratios"].items()]
    return "\n".join(lines) + "\n"


class Report:
    """The results so far, rewritten after every section: a run cut short still leaves what it measured."""

    def __init__(self, prefix, result):
        self.prefix, self.result = prefix, result
        self.result.setdefault("image_size", None)

    def section(self, key, fn):
        title = next(t for k, t, _ in SECTIONS if k == key)
        log(f"{[k for k, _, _ in SECTIONS].index(key) + 1}. {title}")
        try:
            self.result[key] = fn()
        except (Exception, SystemExit) as error:  # one failed section must not cost the others' device time
            message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            self.result.setdefault("errors", {})[key] = message
            log(f"  failed: {message}")
        self.write()
        return self.result.get(key)

    def write(self, final=False):
        if final:
            self.result["environment"]["load_average_after"] = os.getloadavg()[0]
        self.result["ratios"] = collect_ratios(self.result)
        self.result["wall_s"] = time.perf_counter() - START
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{self.prefix}.json").write_text(json.dumps(self.result, indent=2) + "\n")
        table = markdown(self.result)
        Path(f"{self.prefix}.md").write_text(table)
        return table


def output_prefix(args, gpu_name):
    if args.output:
        return Path(re.sub(r"\.(json|md)$", "", args.output))
    stamp = datetime.now().strftime("%Y-%m-%d-%H%M")
    if args.smoke:
        return Path(tempfile.mkdtemp(prefix="simzss-suite-smoke-")) / f"gpu_suite-smoke-{stamp}"
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    return REPO / "benchmarks" / "results" / f"gpu_suite-{slug}-{stamp}"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda (the full run) or cpu; default cuda, cpu with --smoke")
    parser.add_argument("--smoke", action="store_true", help="the same code paths at tiny sizes (< 1 min on CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak dense bf16 TFLOP/s of the device, for the FLOP utilisation (default: table)")
    parser.add_argument("--workers", type=int, default=None,
                        help="trainer loader workers (default: CPUs - 4, at most 12; 1 with --smoke)")
    parser.add_argument("--output", help="path prefix of the .json and .md results")
    parser.add_argument("--write-shards", nargs=3, metavar=("DIR", "SAMPLES", "SHARDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write_shards:
        return args
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        fail("--peak-tflops must be positive")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        fail(f"--device {args.device}: not a torch device")
    if device.type not in ("cpu", "cuda"):
        fail(f"--device {args.device}: use cuda or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail("no CUDA device here: run on a GPU machine, or use --smoke for the CPU check")
    if device.type == "cpu" and not args.smoke:
        fail("the full suite is sized for a GPU (ViT-B/14, batch 1,024): use --device cuda, or --smoke on CPU")
    if args.workers is None:
        args.workers = 1 if args.smoke else max(1, min(12, (os.cpu_count() or 1) - 4))
    if args.workers < 1:
        fail("--workers must be >= 1")
    return args


def in_process_sections(suite, report):
    """Sections 1-4, on copies of one host model."""
    plan = suite.plan
    report.result["image_size"] = suite.image_size

    def training_steps():
        rows = []
        for requested in plan["batch_sizes"]:
            batch_size, row = largest_fitting(suite.training_step, requested, suite.device)
            if any(r["batch_size"] == batch_size for r in rows):
                continue
            rows.append(dict(row, requested_batch_size=requested))
            log(f"  batch {batch_size}: LiT {row['LiT']['img_per_s']:.1f} img/s, SimZSS "
                f"{row['SimZSS']['img_per_s']:.1f} img/s (ratio {row['time_ratio']:.3f}); SimZSS-only "
                f"operations {pct(row['concept_ops']['share_of_step'])} of the step")
        return rows

    steps = report.section("training_step", training_steps)
    largest = max(steps, key=lambda r: r["batch_size"]) if steps else None
    batch_size = largest["batch_size"] if largest else max(plan["batch_sizes"])
    trim = report.section("text_trimming", lambda: largest_fitting(suite.text_trimming, batch_size, suite.device)[1])
    if trim:
        log(f"  speedup {trim['speedup']:.2f}x ({trim['tokens_kept']} of {trim['context_length']} positions)")
    cached_step = partial(suite.cached_step, uncached_img_per_s=largest["SimZSS"]["img_per_s"] if largest else None,
                          peak_tflops=report.result["environment"]["peak_tflops"])
    cached = report.section("cached_step", lambda: largest_fitting(cached_step, batch_size, suite.device)[1])
    if cached:
        log(f"  {cached['samples_per_s']:.0f} samples/s, {cached['tflop_per_s']:.2f} TFLOP/s"
            + (f", MFU {pct(cached['mfu'])}" if cached["mfu"] is not None else ""))
    report.section("segmentation", suite.segmentation)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.write_shards:
        folder, samples, shards = args.write_shards
        print(write_shards(Path(folder), int(samples), int(shards)))
        return 0
    plan = PLANS["smoke" if args.smoke else "full"]
    if args.smoke and args.device == "cpu":
        # A smoke run checks code paths, often on a shared CI machine, where two or more threads per process
        # stall each other for seconds per step: one thread here, in the trainer and in the shard writer.
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    env = environment(args)
    env["peak_tflops"], env["peak_source"] = peak_tflops(args, env["gpu"])
    prefix = output_prefix(args, env["gpu"])
    folder = data_folder(plan["samples"] * 500_000)  # ~400 kB of cached features per image dominate
    writer = start_shard_writer(folder / "shards", plan["samples"], max(2, args.workers))
    log(f"{plan['model']} on {env['gpu']}, torch {env['torch']}, CUDA {env['cuda']}; data in {folder}")
    try:
        report = Report(prefix, {
            "smoke": args.smoke, "date": datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(["python", "benchmarks/gpu_suite.py", *argv]), "environment": env, "plan": plan,
            "model": plan["model"], "lambda_concept": LAMBDA_CONCEPT})
        in_process_sections(Suite(args, plan), report)
        release(torch.device(args.device))  # the suite's models are gone: the device is the trainer's

        def trainer():
            log("  waiting for the shard writer")
            return trainer_runs(args, plan, finish_shard_writer(writer), folder)

        if report.section("trainer", trainer):
            log(f"  cached / uncached: {report.result['trainer']['speedup']:.2f}x")
    finally:
        if writer.poll() is None:
            writer.kill()
        shutil.rmtree(folder, ignore_errors=True)
    print("\n" + report.write(final=True))
    log(f"done in {report.result['wall_s']:.0f} s; results in {prefix}.json and {prefix}.md")
    if report.result.get("errors"):
        print(f"error: {len(report.result['errors'])} section(s) failed: {', '.join(report.result['errors'])}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
