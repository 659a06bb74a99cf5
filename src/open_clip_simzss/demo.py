"""The embedded default: SimZSS vs LiT end to end on synthetic scenes, on a CPU, with no data and no weights.

    simzss-demo                 # ~7 minutes on 2 cores; writes demo_output/report/
    simzss-demo --quick         # a one-minute smoke run (tests)

Steps, each through the code path users run:
1. generate seeded synthetic scenes (``synthetic.py``): training shards (img2dataset layout) and a held-out
   evaluation split with masks (MMSeg layout);
2. extract concepts with spaCy: ``python -m open_clip_simzss.preprocess`` with the demo's concept bank
   (the category names);
3. train ``simzss-tiny`` with SimZSS (λ = 0.05) and with LiT (λ = 0) under identical settings, for several
   seeds: ``python -m training.main ... --vision-weights tower.safetensors --cache-vision-features``. The frozen
   tower stands for pretrained DINOv2: one fixed random tower, saved once and given to every run as a local
   weights file (so the features are cached once); seeds vary the text tower and the data order;
4. evaluate zero-shot segmentation of the held-out scenes with ``ZeroShotSegmenter`` and ``IoUAccumulator``;
5. write ``report/``: ``report.md`` (per-class IoU and mIoU per seed, mean ± std, chance level),
   ``overlays.png``, ``loss_curves.png``, ``pca.png`` and ``results.json``.

With no pretrained weights the tower is random: the demo uses the mean of the patch tokens as the global token
(``simzss-tiny`` is configured so) since a random tower's CLS token carries nothing.
"""
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from . import synthetic

# A small prompt ensemble: with a single prompt, the effect of the concept loss on the EOS token is noisier.
DEMO_TEMPLATES = ["a photo of a {}.", "a {}.", "there is a {} in the image.", "a picture of the {}.", "{}"]


@dataclass
class DemoConfig:
    train_images: int = 1536
    eval_images: int = 200
    captions_per_image: int = 3
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 20
    lambda_concept: float = 0.05
    image_size: int = 112
    workers: int = 1

    @classmethod
    def quick(cls) -> "DemoConfig":
        return cls(train_images=96, eval_images=12, seeds=[0], epochs=1, batch_size=32, warmup=2)


def _run(cmd: List[str], log_path: Path):
    """Run a project CLI in a subprocess (exactly what a user types), its output to a log file."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        result = subprocess.run([sys.executable, *cmd], stdout=log, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (see {log_path}):\n" + "\n".join(tail))


def make_data(cfg: DemoConfig, data: Path) -> Dict:
    info = synthetic.write_train_shards(data / "train", cfg.train_images, seed=10_000, size=cfg.image_size,
                                        captions_per_image=cfg.captions_per_image,
                                        images_per_shard=max(16, cfg.train_images // 6))
    synthetic.write_eval_split(data / "eval", cfg.eval_images, seed=20_000, size=cfg.image_size)
    (data / "bank.txt").write_text("\n".join(synthetic.concept_bank_lines()) + "\n")
    # The frozen tower plays the part of pretrained DINOv2: one fixed set of (random) weights, given to every run
    # as a local weights file, exactly as real DINOv2 weights are given offline. Seeds vary the text side.
    import open_clip_simzss
    from safetensors.torch import save_file
    torch.manual_seed(1234)
    tower = open_clip_simzss.create_model("simzss-tiny").visual.trunk
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(data / "tower.safetensors"))
    _run(["-m", "open_clip_simzss.preprocess", "--input", info["pattern"], "--output", str(data / "concepts"),
          "--concept-bank", str(data / "bank.txt"), "--workers", "1"], data / "preprocess.log")
    info["pattern"] = str(data / "concepts" / Path(info["pattern"]).name)
    return info


def train(cfg: DemoConfig, info: Dict, out: Path, seed: int, lambda_concept: float) -> Path:
    name = f"{'simzss' if lambda_concept > 0 else 'lit'}-seed{seed}"
    checkpoint = out / "runs" / name / "checkpoints" / f"epoch_{cfg.epochs}.pt"
    if checkpoint.exists():
        return checkpoint
    _run(["-m", "training.main", "--model", "simzss-tiny", "--train-data", info["pattern"],
          "--train-num-samples", str(info["num_samples"]), "--batch-size", str(cfg.batch_size),
          "--epochs", str(cfg.epochs), "--lr", str(cfg.lr), "--warmup", str(cfg.warmup), "--wd", "0.1",
          "--precision", "fp32", "--workers", str(cfg.workers), "--seed", str(seed),
          "--lambda-concept", str(lambda_concept), "--concept-source", "stored",
          "--concept-bank", str(out / "data" / "bank.txt"),
          "--vision-weights", str(out / "data" / "tower.safetensors"),
          "--cache-vision-features", str(out / "cache"), "--logs", str(out / "runs"), "--name", name,
          "--log-every-n-steps", "10", "--resume", "latest"], out / f"train-{name}.log")
    return checkpoint


def load_split(root: Path):
    images = sorted((root / "images" / "validation").glob("*.jpg"))
    return [(np.array(Image.open(p).convert("RGB")), np.array(Image.open(
        root / "annotations" / "validation" / (p.stem + ".png")))) for p in images]


def evaluate(checkpoint: Path, split, class_names, image_size: int):
    """Zero-shot segmentation of the held-out scenes: (summary dict, predictions)."""
    from .loading import load_model, load_tokenizer
    from .metrics import IoUAccumulator
    from .segmentation import ZeroShotSegmenter

    model, _ = load_model("simzss-tiny", str(checkpoint), device="cpu")
    segmenter = ZeroShotSegmenter(model, load_tokenizer(model), class_names,
                                  templates=DEMO_TEMPLATES, short_side=image_size, window=image_size,
                                  stride=image_size // 2)
    acc = IoUAccumulator(len(class_names))
    predictions = []
    for image, label in split:
        pred = segmenter.predict(image).cpu().numpy()
        acc.update(pred, label)
        predictions.append(pred)
    return acc.summary(class_names), predictions


def chance_level(split, num_classes: int, seed: int = 0) -> float:
    """mIoU of uniformly random label maps (the floor every run must be far above)."""
    from .metrics import IoUAccumulator
    rng = np.random.default_rng(seed)
    acc = IoUAccumulator(num_classes)
    for _, label in split:
        acc.update(rng.integers(0, num_classes, label.shape), label)
    return acc.miou()


def _history(run_dir: Path) -> List[Dict]:
    path = run_dir / "history-rank0.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def write_report(cfg, out: Path, results, chance, split, predictions, class_names, seconds):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .loading import load_model
    from .visualize import colorize, legend_patches, palette, pca_panels

    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    methods = ["SimZSS", "LiT"]
    miou = {m: [results[m][s]["miou"] for s in cfg.seeds] for m in methods}
    lines = ["# SimZSS vs LiT on synthetic scenes", "",
             f"`simzss-tiny` (a fixed random ViT-Ti/8 tower, frozen, loaded from a local weights file; 3-layer text tower), {cfg.train_images} training images "
             f"x {cfg.captions_per_image} captions, {cfg.epochs} epochs of batch {cfg.batch_size}, lr {cfg.lr}, "
             f"λ = {cfg.lambda_concept} for SimZSS and 0 for LiT, otherwise identical. Zero-shot segmentation of "
             f"{cfg.eval_images} held-out scenes, {len(class_names)} classes, {len(DEMO_TEMPLATES)} prompts. "
             f"Total time {seconds / 60:.1f} min.", "",
             "| seed | SimZSS mIoU | LiT mIoU | difference |", "|---|---|---|---|"]
    for i, s in enumerate(cfg.seeds):
        lines.append(f"| {s} | {miou['SimZSS'][i]:.2f} | {miou['LiT'][i]:.2f} | "
                     f"{miou['SimZSS'][i] - miou['LiT'][i]:+.2f} |")
    mean = {m: float(np.mean(v)) for m, v in miou.items()}
    std = {m: float(np.std(v)) for m, v in miou.items()}
    lines += [f"| mean ± std | {mean['SimZSS']:.2f} ± {std['SimZSS']:.2f} | {mean['LiT']:.2f} ± {std['LiT']:.2f} "
              f"| {mean['SimZSS'] - mean['LiT']:+.2f} |", "", f"Chance level (uniformly random labels): {chance:.2f} mIoU.",
              "", "Per-class IoU (mean over seeds):", "", "| class | SimZSS | LiT |", "|---|---|---|"]
    for name in class_names:
        vals = {m: [results[m][s]["per_class"][name] for s in cfg.seeds] for m in methods}
        cells = [f"{np.mean([v for v in vals[m] if v is not None]):.2f}" if any(v is not None for v in vals[m])
                 else "–" for m in methods]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    lines += ["", "![overlays](overlays.png)", "", "![loss curves](loss_curves.png)", "", "![PCA](pca.png)", ""]
    (report / "report.md").write_text("\n".join(lines))
    (report / "results.json").write_text(json.dumps(
        {"config": asdict(cfg), "miou": miou, "mean": mean, "std": std, "chance": chance, "per_seed": results,
         "seconds": seconds}, indent=2))

    colors = palette(len(class_names))
    shown = list(range(min(4, len(split))))
    seed = cfg.seeds[0]
    fig, axes = plt.subplots(len(shown), 4, figsize=(10, 2.6 * len(shown)), squeeze=False)
    for row, i in enumerate(shown):
        image, label = split[i]
        for col, (title, picture) in enumerate([
                ("image", image), ("ground truth", colorize(label, colors)),
                (f"SimZSS (seed {seed})", colorize(predictions["SimZSS"][i], colors)),
                (f"LiT (seed {seed})", colorize(predictions["LiT"][i], colors))]):
            axes[row, col].imshow(picture)
            axes[row, col].set_title(title if row == 0 else "", fontsize=9)
            axes[row, col].axis("off")
    fig.legend(handles=legend_patches(class_names, colors), loc="lower center", ncol=7, fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(report / "overlays.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for method, style in (("SimZSS", "-"), ("LiT", "--")):
        for s in cfg.seeds:
            hist = _history(out / "runs" / f"{method.lower()}-seed{s}")
            if hist:
                axes[0].plot([h["step"] for h in hist], [h["contrastive_loss"] for h in hist], style,
                             label=f"{method} seed {s}")
                if method == "SimZSS":
                    axes[1].plot([h["step"] for h in hist], [h["concept_loss"] / cfg.lambda_concept for h in hist],
                                 label=f"seed {s}")
    axes[0].set(title="global (CLIP) loss", xlabel="step")
    axes[1].set(title="concept loss (before λ)", xlabel="step")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(report / "loss_curves.png", dpi=110)
    plt.close(fig)

    model, _ = load_model("simzss-tiny", str(out / "runs" / f"simzss-seed{seed}" / "checkpoints"
                                              / f"epoch_{cfg.epochs}.pt"), device="cpu")
    import open_clip
    pre = open_clip.get_model_preprocess_cfg(model)
    mean = torch.tensor(pre["mean"]).view(3, 1, 1)
    std = torch.tensor(pre["std"]).view(3, 1, 1)
    with torch.no_grad():
        dense = [model.encode_dense(((torch.from_numpy(split[i][0]).permute(2, 0, 1).float() / 255 - mean) / std)[None],
                                    normalize=True)[0] for i in shown]
    pictures = pca_panels(dense)  # one basis for all images: equal colours mean equal features
    fig, axes = plt.subplots(2, len(shown), figsize=(2.5 * len(shown), 5), squeeze=False)
    for col, i in enumerate(shown):
        axes[0, col].imshow(split[i][0])
        axes[1, col].imshow(pictures[col], interpolation="nearest")
        axes[0, col].axis("off")
        axes[1, col].axis("off")
    axes[1, 0].set_title("dense features, PCA → RGB", fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(report / "pca.png", dpi=110)
    plt.close(fig)
    return report


def run_demo(output: str = "demo_output", quick: bool = False, seeds: Optional[List[int]] = None) -> Path:
    """The whole demo (module docstring); returns the report folder."""
    cfg = DemoConfig.quick() if quick else DemoConfig()
    if seeds:
        cfg.seeds = list(seeds)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.time()
    class_names = [c.name for c in synthetic.CATEGORIES]
    stages = tqdm(total=2 + 2 * len(cfg.seeds), desc="demo", unit="stage", dynamic_ncols=True)
    stages.set_postfix_str("synthetic scenes + spaCy concepts")
    info = make_data(cfg, out / "data")
    stages.update(1)
    split = load_split(out / "data" / "eval")
    results = {"SimZSS": {}, "LiT": {}}
    predictions = {}
    for seed in cfg.seeds:
        for method, lam in (("SimZSS", cfg.lambda_concept), ("LiT", 0.0)):
            stages.set_postfix_str(f"train + evaluate {method}, seed {seed}")
            checkpoint = train(cfg, info, out, seed, lam)
            results[method][seed], preds = evaluate(checkpoint, split, class_names, cfg.image_size)
            if seed == cfg.seeds[0]:
                predictions[method] = preds
            stages.update(1)
    chance = chance_level(split, len(class_names))
    stages.set_postfix_str("report")
    report = write_report(cfg, out, results, chance, split, predictions, class_names, time.time() - start)
    stages.update(1)
    stages.close()
    return report


if __name__ == "__main__":  # python -m open_clip_simzss.demo
    from open_clip_simzss.cli.demo import main
    raise SystemExit(main())
