"""Zero-shot segmentation throughput, and what the engine costs on top of the vision tower.

    python benchmarks/segment_throughput.py                         # CPU, simzss-vits14, 2 images per shape
    python benchmarks/segment_throughput.py --model simzss-vitb14 --device cuda --images 20

For a VOC-like 500x375 image (-> 597x448, 2 windows; 20 classes) and a Cityscapes-like 2048x1024 image
(-> 896x448, 3 windows; 19 classes) under the protocol of docs/evaluation.md, it reports images/s of
``SlidingWindowEngine.classes_and_confidence`` (labels, plus the background confidence where the dataset has a
background: the evaluation path), the time of the
vision tower's forward on the windows (``model.encode_dense``), and everything else (resize and normalisation,
classifier product, window upsampling and stitching, resize back to the original size with argmax and
confidence) as a share of the total (goal: <= 5 %), and the evaluator's path, where ``--images-per-batch``
consecutive images share the tower's forwards, against one image at a time. The one-off text classifier (80 templates) is
timed separately and amortised over the split (VOC 1449 images, Cityscapes 500). Weights are random: speed
does not depend on them.
"""
import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import open_clip
import open_clip_simzss
from _common import Clock, run_case, time_tower

CASES = [  # name, (H, W), text classes, split size for amortising the classifier, background by threshold
    # VOC21's text classes are VOC20's; its background comes from the foreground confidence (the costly path)
    ("voc21 500x375", (375, 500), "voc20", 1449, True),
    ("cityscapes 2048x1024", (1024, 2048), "cityscapes", 500, False),  # no background: no confidence needed
]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="simzss-vits14")
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=3, help="timed images per case (plus one warm-up)")
    p.add_argument("--templates", default="openai80")
    p.add_argument("--window-batch-size", type=int, default=4)
    p.add_argument("--images-per-batch", type=int, default=2, help="images whose windows share forwards")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice, all cores)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = open_clip_simzss.create_model(args.model, device=device).eval()
    tokenizer = open_clip.get_tokenizer(args.model)
    clock = Clock(device)
    tower = time_tower(model, clock)
    print(f"{args.model} on {device} ({torch.get_num_threads()} threads), {args.images} images per case")
    results = []
    for name, size, classes, split, with_background in CASES:
        r = run_case(model, tokenizer, clock, tower, name, size, classes, split, with_background, args.images,
                     args.templates, args.window_batch_size, args.images_per_batch)
        results.append(r)
        print(f"\n{name}: {r['windows_per_image']} windows, {r['classes']} classes")
        print(f"  {r['images_per_s']:.3f} images/s (median {r['median_s_per_image']:.3f} s/image, "
              f"vision tower {r['median_tower_s_per_image']:.3f} s)")
        print(f"  overhead (not the tower's forward): {100 * r['overhead_share']:.1f} % of the total")
        labels = {"preprocess": "resize + normalise", "windows_minus_tower": "classifier product + stitching",
                  "to_original": "resize to original + argmax (+ confidence)"}
        for k, v in r["overhead_ms_per_image"].items():
            print(f"    {labels[k]}: {v:.1f} ms/image")
        print(f"  {r['images_per_batch']} images per call (the evaluator's path): {r['batched_images_per_s']:.3f} "
              f"images/s, {r['batched_speedup']:.2f}x one image at a time")
        print(f"  text classifier: {r['classifier_build_s']:.2f} s once = "
              f"{100 * r['classifier_amortised_share']:.2f} % over the {r['split_size']}-image split")
    worst = max(r["overhead_share"] for r in results)
    print(f"\nworst overhead share: {100 * worst:.1f} % (goal <= 5 %)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "device": str(device), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
