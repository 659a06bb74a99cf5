"""What does SimZSS cost over LiT? One full training step (forward, loss, backward, AdamW step) of each on the
same model and batch: median step time and peak memory, and their ratios.

    python benchmarks/step_overhead.py                      # CPU: simzss-vits14, batch 32 at 224
    python benchmarks/step_overhead.py --model simzss-vitb14 --batch-size 256 --device cuda --precision bf16

Paper (§4, Table 13, 8 MI250x dies, ViT-B/14): 3,957 vs 3,997 img/s (time ratio 1.01), 38 vs 27 GB (1.41).
Time is measured with the two modes interleaved in one process (same thermal and load conditions). Memory is
measured in a fresh subprocess per mode: peak CUDA allocation on a GPU, peak resident set size on the CPU.
"""
import argparse
import copy
import json
import os
import random
import threading
import statistics
import subprocess
import sys
import time

import torch

import open_clip_simzss
from open_clip_simzss.loss import SimZSSLoss, total_loss

NOUNS = ["dog", "cat", "bus", "tree", "man", "horse", "car", "table", "pizza", "sky", "road", "boat", "person",
         "kite", "bench", "clock", "train", "plate", "bed", "chair"]
ADJECTIVES = ["red", "small", "old", "wooden", "happy", "large"]


def synthetic_batch(tokenizer, batch_size, image_size, concepts_per_caption=2, seed=0):
    """Captions with known concept token positions (every noun is one BPE token here)."""
    rng = random.Random(seed)
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    text = torch.zeros(batch_size, tokenizer.context_length, dtype=torch.long)
    ids, image_index, positions = [], [], []
    for i in range(batch_size):
        words = ["a", rng.choice(ADJECTIVES)]
        nouns = rng.sample(range(len(NOUNS)), concepts_per_caption)
        tokens = [sot] + tokenizer.encode(" ".join(words))
        for j, noun in enumerate(nouns):
            if j:
                tokens += tokenizer.encode("next to a")
            ids.append(noun)
            image_index.append(i)
            positions.append(len(tokens))
            tokens += tokenizer.encode(NOUNS[noun])
        tokens.append(eot)
        text[i, : len(tokens)] = torch.tensor(tokens)
    mask = torch.zeros(len(ids), tokenizer.context_length, dtype=torch.bool)
    mask[torch.arange(len(ids)), torch.tensor(positions)] = True
    return dict(
        image=torch.randn(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed)),
        text=text, concept_ids=torch.tensor(ids), concept_image_index=torch.tensor(image_index),
        concept_token_mask=mask,
    )


def make_step(model, lambda_concept, batch, device, precision):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    loss_fn = SimZSSLoss(lambda_concept=lambda_concept)
    inputs = {k: v.to(device) for k, v in batch.items()}
    if lambda_concept == 0:  # LiT: the loader would not even produce concepts
        inputs = {k: inputs[k] for k in ("image", "text")}
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = total_loss(loss_fn(**model(**inputs)))
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss.item()
    return step


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _peak_rss_during(fn):
    """Peak resident set size while ``fn`` runs, sampled every millisecond (CPU tensors have no allocator stats)."""
    peak, done = [_rss_mib()], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.001)
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], _rss_mib())


def measure_memory(args, lambda_concept):
    """Peak memory of two training steps (the first allocates AdamW's state) in a fresh process, in MiB:
    (total peak, peak above the memory held before the first step)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = open_clip_simzss.create_model(args.model, device=device)
    batch = synthetic_batch(open_clip_simzss.get_tokenizer(args.model), args.batch_size, args.image_size)
    step = make_step(model, lambda_concept, batch, device, args.precision)
    if device.type == "cuda":
        before = torch.cuda.memory_allocated() / 2 ** 20
        torch.cuda.reset_peak_memory_stats()
        step(), step()
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        before = _rss_mib()
        peak = _peak_rss_during(lambda: (step(), step()))
    return peak, peak - before


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="simzss-vits14")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=7, help="timed steps per mode (after 2 warm-up steps)")
    parser.add_argument("--lambda-concept", type=float, default=0.05)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--memory-only", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()

    if args.memory_only is not None:
        peak, step_only = measure_memory(args, args.memory_only)
        print(json.dumps({"peak_mib": peak, "step_mib": step_only}))
        return

    device = torch.device(args.device)
    torch.manual_seed(0)
    lit = open_clip_simzss.create_model(args.model, device=device)
    simzss = copy.deepcopy(lit)
    batch = synthetic_batch(open_clip_simzss.get_tokenizer(args.model), args.batch_size, args.image_size)
    steps = {"LiT": make_step(lit, 0.0, batch, device, args.precision),
             "SimZSS": make_step(simzss, args.lambda_concept, batch, device, args.precision)}
    times = {k: [] for k in steps}
    for i in range(args.steps + 2):
        for name, step in steps.items():  # interleaved
            start = time.perf_counter()
            step()
            if i >= 2:
                times[name].append(time.perf_counter() - start)

    # The SimZSS-only work, timed alone (not subject to the step-to-step noise of a shared machine):
    # Eq. 1-2 pooling of text concepts from the text tokens, Eq. 3-4 visual concepts, Eq. 7-9, and their backward.
    model = simzss
    inputs = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad():
        _, patch = model.visual.forward_tokens(inputs["image"])
        _, tokens = model._encode_text_both(inputs["text"])
    patch, tokens = patch.flatten(1, 2), tokens.detach().requires_grad_(True)
    loss_fn = SimZSSLoss(lambda_concept=args.lambda_concept)

    def concept_ops():
        text_concepts = model.encode_text_concepts(tokens, inputs["concept_image_index"], inputs["concept_token_mask"])
        loss, _ = loss_fn.concept_loss(patch, text_concepts, inputs["concept_ids"], inputs["concept_image_index"])
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
    concept_ops()
    concept_times = []
    for _ in range(20):
        start = time.perf_counter()
        concept_ops()
        concept_times.append(time.perf_counter() - start)
    concept_s = statistics.median(concept_times)

    memory = {}
    for name, lam in (("LiT", 0.0), ("SimZSS", args.lambda_concept)):
        cmd = [sys.executable, __file__, "--memory-only", str(lam)] + [
            f"--model={args.model}", f"--batch-size={args.batch_size}", f"--image-size={args.image_size}",
            f"--device={args.device}", f"--precision={args.precision}"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
        memory[name] = json.loads(out.strip().splitlines()[-1])

    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model": args.model, "batch_size": args.batch_size, "image_size": args.image_size, "device": args.device,
        "precision": args.precision, "threads": torch.get_num_threads(),
        "concepts_per_caption": 2, "step_s": median, "img_per_s": {k: args.batch_size / v for k, v in median.items()},
        "memory_mib": memory,
        "time_ratio": median["SimZSS"] / median["LiT"],
        "memory_ratio": memory["SimZSS"]["peak_mib"] / memory["LiT"]["peak_mib"],
        "step_memory_ratio": memory["SimZSS"]["step_mib"] / memory["LiT"]["step_mib"],
        "concept_ops_s": concept_s, "concept_ops_share": concept_s / median["SimZSS"],
    }
    memory_kind = "peak CUDA allocation" if device.type == "cuda" else "peak RSS"
    print(f"{args.model}, batch {args.batch_size} at {args.image_size}, {args.device} {args.precision}, "
          f"median of {args.steps} steps")
    for name in steps:
        print(f"  {name:7s} {median[name] * 1000:9.1f} ms/step  {result['img_per_s'][name]:8.1f} img/s  "
              f"{memory[name]['peak_mib']:9.0f} MiB {memory_kind} ({memory[name]['step_mib']:.0f} MiB for the step)")
    print(f"  ratio SimZSS/LiT: time {result['time_ratio']:.3f} (goal <= 1.02), "
          f"memory {result['memory_ratio']:.3f} (goal <= 1.10), step memory {result['step_memory_ratio']:.3f}")
    print(f"  SimZSS-only operations (Eq. 1-4, 7-9, forward + backward) timed alone: {concept_s * 1000:.1f} ms = "
          f"{100 * result['concept_ops_share']:.2f} % of the SimZSS step (paper: < 1 %)")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
