"""The embedded default: SimZSS vs LiT end to end on synthetic scenes, on a CPU, with no data and no weights.

    simzss-demo                 # ~7 minutes on 2 cores; writes demo_output/report/
    simzss-demo --quick         # a one-minute smoke run (tests)
    simzss-demo --study lambda  # the paper's ablations on this bench (``studies.py``, docs/studies.md)

Steps, each through the code path users run:
1. generate seeded synthetic scenes (``synthetic.py``): training shards (img2dataset layout) and a held-out
   evaluation split with masks (MMSeg layout);
2. extract concepts with spaCy: ``python -m open_clip_simzss preprocess`` with the demo's concept bank
   (the category names);
3. train ``simzss-tiny`` with SimZSS (λ = 0.05) and with LiT (λ = 0) under identical settings, for several
   seeds: ``python -m training.main ... --vision-weights tower.safetensors --cache-vision-features``. The frozen
   tower stands for pretrained DINOv2: one fixed random tower, saved once and given to every run as a local
   weights file (so the features are cached once); seeds vary the text tower and the data order;
4. evaluate zero-shot segmentation of the held-out scenes with the ``SlidingWindowEngine`` and
   ``IoUAccumulator``;
5. write ``report/``: ``report.md`` (per-class IoU and mIoU per seed, mean ± std, chance level),
   ``overlays.png``, ``loss_curves.png``, ``pca.png`` and ``results.json``.

With no pretrained weights the tower is random: the demo uses the mean of the patch tokens as the global token
(``simzss-tiny`` is configured so) since a random tower's CLS token carries nothing.
"""
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from . import launch, synthetic

TRAIN_SEED = 10_000  # scene seeds of the training shards and of the held-out split (they must differ)
EVAL_SEED = 20_000

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

    def bench(self) -> Dict:
        """Everything a trained run and its evaluation depend on, except the run's own settings and seed."""
        return {k: v for k, v in asdict(self).items() if k not in ("seeds", "lambda_concept", "workers")}


@dataclass(frozen=True)
class RunSettings:
    """The hyperparameters a training run varies: the study axes. λ = 0 is LiT."""
    lambda_concept: float = 0.05
    concept_tau: float = 0.1
    variant: str = "paper"  # "paper" or "release" (--simzss-variant)
    bank: str = "demo"      # "demo" (the category names) or "none" (every concept kept)

    def run_name(self, seed: int) -> str:
        """One folder per run, named by all its hyperparameters, so that studies sharing an output folder train
        every run once (the demo's SimZSS is the λ study's λ = 0.05, its LiT is λ = 0)."""
        return (f"lam{self.lambda_concept:g}-tau{self.concept_tau:g}-{self.variant}-bank{self.bank}"
                f"-seed{seed}")


LIT = RunSettings(lambda_concept=0.0)


class BenchMismatchError(ValueError):
    """The output folder holds a bench made with another configuration (its runs cannot be reused)."""


def make_data(cfg: DemoConfig, data: Path) -> Dict:
    """Scenes, concepts and the frozen tower in ``data``; made once per output folder (``bench.json`` records
    the configuration, so runs cached under the folder are only reused by a run of the same bench)."""
    marker = data / "bench.json"
    pattern = str(data / "concepts" / "{00000..%05d}.tar")
    if marker.exists():
        made = json.loads(marker.read_text())
        if made["config"] != cfg.bench():
            raise BenchMismatchError(f"{data.parent} holds a bench made with another configuration "
                                     f"({'--quick' if made['config'] == DemoConfig.quick().bench() else 'full'}): "
                                     "use another --output folder")
        return made["info"]
    info = synthetic.write_train_shards(data / "train", cfg.train_images, seed=TRAIN_SEED, size=cfg.image_size,
                                        captions_per_image=cfg.captions_per_image,
                                        images_per_shard=max(16, cfg.train_images // 6))
    synthetic.write_eval_split(data / "eval", cfg.eval_images, seed=EVAL_SEED, size=cfg.image_size)
    (data / "bank.txt").write_text("\n".join(synthetic.concept_bank_lines()) + "\n")
    # The frozen tower plays the part of pretrained DINOv2: one fixed set of (random) weights, given to every run
    # as a local weights file, exactly as real DINOv2 weights are given offline. Seeds vary the text side.
    from safetensors.torch import save_file

    from ..factory import create_model
    torch.manual_seed(1234)
    tower = create_model("simzss-tiny").visual.trunk
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(data / "tower.safetensors"))
    launch.command("preprocess", ["--input", info["pattern"], "--output", str(data / "concepts"),
                                  "--concept-bank", str(data / "bank.txt"), "--workers", "1"], data / "preprocess.log")
    info["pattern"] = pattern % (info["num_shards"] - 1)
    marker.write_text(json.dumps({"config": cfg.bench(), "info": info}, indent=2))
    return info


def concept_shards(info: Dict, data: Path, bank: str) -> str:
    """The training shards annotated with ``bank``'s concepts: the demo bank's are made with the data; those of
    ``none`` (every noun chunk a concept, Table 4's ablation) on first use."""
    if bank == "demo":
        return info["pattern"]
    if bank != "none":
        raise ValueError(f"bank must be 'demo' or 'none', got {bank!r}")
    folder = data / "concepts-none"
    if not (folder / "preprocess_stats.json").exists():
        source = str(data / "train" / Path(info["pattern"]).name)
        launch.command("preprocess", ["--input", source, "--output", str(folder), "--concept-bank", "none",
                                      "--workers", "1"], data / "preprocess-none.log")
    return str(folder / Path(info["pattern"]).name)


def train(cfg: DemoConfig, info: Dict, out: Path, seed: int, settings: RunSettings) -> Path:
    """Train one run (or return its checkpoint when an earlier study or demo in ``out`` trained it)."""
    name = settings.run_name(seed)
    checkpoint = out / "runs" / name / "checkpoints" / f"epoch_{cfg.epochs}.pt"
    if checkpoint.exists():
        return checkpoint
    data = out / "data"
    (out / "runs").mkdir(parents=True, exist_ok=True)
    bank = str(data / "bank.txt") if settings.bank == "demo" else settings.bank
    launch.train(["--model", "simzss-tiny", "--train-data", concept_shards(info, data, settings.bank),
                  "--train-num-samples", str(info["num_samples"]), "--batch-size", str(cfg.batch_size),
                  "--epochs", str(cfg.epochs), "--lr", str(cfg.lr), "--warmup", str(cfg.warmup), "--wd", "0.1",
                  "--precision", "fp32", "--workers", str(cfg.workers), "--seed", str(seed),
                  "--lambda-concept", str(settings.lambda_concept), "--concept-tau", str(settings.concept_tau),
                  "--simzss-variant", settings.variant, "--concept-source", "stored", "--concept-bank", bank,
                  "--vision-weights", str(data / "tower.safetensors"),
                  "--cache-vision-features", str(out / "cache"), "--logs", str(out / "runs"), "--name", name,
                  "--log-every-n-steps", "10", "--resume", "latest"], out / "runs" / f"train-{name}.log")
    for epoch in range(1, cfg.epochs):  # kept for --resume while the run trains; ~90 MB each, dozens of runs
        (checkpoint.parent / f"epoch_{epoch}.pt").unlink(missing_ok=True)
    return checkpoint


def load_split(root: Path, split: str = "validation"):
    """[(RGB image [H, W, 3] uint8, label map [H, W] uint8)] of an MMSeg-style folder."""
    images = sorted((root / "images" / split).glob("*.jpg"))
    return [(np.array(Image.open(p).convert("RGB")), np.array(Image.open(
        root / "annotations" / split / (p.stem + ".png")))) for p in images]


def load_run(checkpoint: Path):
    """(model, tokenizer) of a trained run."""
    from ..weights.load import load_model, load_tokenizer
    model, _ = load_model("simzss-tiny", str(checkpoint), device="cpu")
    return model, load_tokenizer(model)


def demo_protocol(image_size: int, templates=DEMO_TEMPLATES):
    """The demo's ``SegmentationProtocol``: the whole scene is one window (stride half a window)."""
    from ..segmentation.protocol import SegmentationProtocol
    return SegmentationProtocol(templates=tuple(templates), short_side=image_size, window=image_size,
                                stride=image_size // 2)


def make_engine(model, image_size: int, templates=DEMO_TEMPLATES):
    """The demo's ``SlidingWindowEngine`` (``demo_protocol``)."""
    from ..segmentation.engine import SlidingWindowEngine
    return SlidingWindowEngine(model, demo_protocol(image_size, templates))


def text_classifier(model, tokenizer, class_names, templates=DEMO_TEMPLATES):
    """The text classifier of the class names with the demo's prompts."""
    from ..segmentation.classifier import build_text_classifier
    return build_text_classifier(model, tokenizer, class_names, tuple(templates))


def score(engine, classifier, split, class_names):
    """(summary dict of ``IoUAccumulator``, predictions) of ``engine`` with ``classifier`` on the split."""
    from ..evaluation.metrics import IoUAccumulator
    acc = IoUAccumulator(len(class_names))
    predictions = []
    for image, label in split:
        pred = engine.predict(image, classifier).cpu().numpy()
        acc.update(pred, label)
        predictions.append(pred)
    return acc.summary(class_names), predictions


def evaluate(checkpoint: Path, split, class_names, image_size: int):
    """Zero-shot segmentation of the held-out scenes: (summary dict, predictions)."""
    model, tokenizer = load_run(checkpoint)
    return score(make_engine(model, image_size), text_classifier(model, tokenizer, class_names), split, class_names)


def chance_level(split, num_classes: int, seed: int = 0) -> float:
    """mIoU of uniformly random label maps (the floor every run must be far above)."""
    from ..evaluation.metrics import IoUAccumulator
    rng = np.random.default_rng(seed)
    acc = IoUAccumulator(num_classes)
    for _, label in split:
        acc.update(rng.integers(0, num_classes, label.shape), label)
    return acc.miou()


def demo_methods(cfg: DemoConfig) -> Dict[str, RunSettings]:
    return {"SimZSS": RunSettings(lambda_concept=cfg.lambda_concept), "LiT": LIT}


def _history(run_dir: Path) -> List[Dict]:
    path = run_dir / "history-rank0.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def write_report(cfg, out: Path, results, chance, split, predictions, class_names, seconds):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..segmentation.pictures import colorize, legend_patches, palette, pca_panels
    from ..weights.load import load_model

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
            hist = _history(out / "runs" / demo_methods(cfg)[method].run_name(s))
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

    model, _ = load_model("simzss-tiny", str(out / "runs" / demo_methods(cfg)["SimZSS"].run_name(seed)
                                              / "checkpoints" / f"epoch_{cfg.epochs}.pt"), device="cpu")
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
        for method, settings in demo_methods(cfg).items():
            stages.set_postfix_str(f"train + evaluate {method}, seed {seed}")
            checkpoint = train(cfg, info, out, seed, settings)
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
