"""The paper's ablations on the demo's synthetic bench (docs/studies.md), through the demo's code path.

    simzss-demo --study variants lambda tau bank fewshot --output demo_output   # all five: ~1.5 h on 2 cores
    simzss-demo --study variants --seeds 0 1 2 3 4 --output demo_output         # docs/studies.md's 5 seeds
    simzss-demo --study lambda --quick --output /tmp/quick                      # seconds: tests

Every study trains ``simzss-tiny`` with ``python -m training.main`` on the demo's scenes (``demo.make_data``,
the demo's frozen tower and feature cache) and evaluates with the ``SlidingWindowEngine`` on the demo's held-out
scenes. A run is named by all its hyperparameters (``demo.RunSettings.run_name``), so studies that share an
``--output`` folder with each other and with the demo train every run once: LiT is the λ study's λ = 0, the
demo's SimZSS its λ = 0.05, the τ study's τ = 0.1 and the bank study's bank.

Each study writes ``studies/<name>/report.md``, ``results.json`` and ``<name>.png``: per setting the mean ±
sample standard deviation over the seeds of the mIoU with the demo's prompt ensemble, of its objects and its
stuff (backgrounds) classes, and of the mIoU with the bare class name as the only prompt; the paired difference
between settings with its 95 % t-interval across seeds (the seed is the pairing unit: the same seed gives the
same text-tower initialisation and data order to both); and the paper's expected trend next to what was
measured.
"""
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import demo, synthetic

# The synthetic categories split as the paper's datasets do: backgrounds are "stuff", blobs are "objects".
STUFF_CLASSES = [c.name for c in synthetic.BACKGROUNDS]
OBJECT_CLASSES = [c.name for c in synthetic.OBJECTS]
METRICS = {"miou": "mIoU (ensemble)", "objects": "objects", "stuff": "stuff", "name": "mIoU (bare name)"}

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (no scipy at run time).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


@dataclass(frozen=True)
class Setting:
    """One row of a study: a training run (per seed) and the classifier it is read out with."""
    label: str
    run: demo.RunSettings
    # "text": the text classifier; "fewshot": class means of the training tokens (segmentation/fewshot.py)
    readout: str = "text"


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    settings: Tuple[Setting, ...]
    comparisons: Tuple[Tuple[str, str], ...]  # (a, b): the paired difference a - b
    quick: Tuple[str, ...]                     # the settings kept by --quick
    expected: str                              # the paper's trend, quoted
    checks: Tuple[Tuple[str, str, str, int], ...] = field(default=())  # (claim, a, b, expected sign of a - b)


def _lam(x):
    return Setting(f"λ = {x:g}", demo.RunSettings(lambda_concept=x))


def _tau(x):
    return Setting(f"τ = {x:g}", demo.RunSettings(concept_tau=x))


SIMZSS_ROW = Setting("SimZSS (paper)", demo.RunSettings())
LIT_ROW = Setting("LiT", demo.LIT)
LAMBDAS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
TAUS = (0.01, 0.04, 0.07, 0.1, 0.4)

STUDIES = {s.name: s for s in [
    Study("variants", "LiT vs SimZSS with the paper's loss vs SimZSS with the authors' released loss",
          (LIT_ROW, SIMZSS_ROW, Setting("SimZSS (release)", demo.RunSettings(variant="release"))),
          (("SimZSS (paper)", "LiT"), ("SimZSS (release)", "LiT"), ("SimZSS (release)", "SimZSS (paper)")),
          ("LiT", "SimZSS (paper)", "SimZSS (release)"),
          "SimZSS beats LiT on all eight benchmarks (Tables 1-2: e.g. VOC20 90.3 vs 86.1, Context59 43.1 vs 35.5). "
          "The published numbers come from the released loss (argmax targets, class-row queries, sums of "
          "normalised token projections; docs/method.md); the paper never compares it with its own equations.",
          (("SimZSS (paper) > LiT", "SimZSS (paper)", "LiT", 1),
           ("SimZSS (release) > LiT", "SimZSS (release)", "LiT", 1))),
    Study("lambda", "The weight λ of the concept loss (λ = 0 is LiT)", tuple(_lam(x) for x in LAMBDAS),
          tuple((f"λ = {x:g}", "λ = 0") for x in LAMBDAS[1:]), ("λ = 0", "λ = 0.05"),
          "Table 9: λ = 0 (LiT) is worst; VOC20 89.8 / 89.8 / 90.3 / 90.1 and Context59 40.2 / 41.9 / 43.1 / 41.8 "
          "for λ = 0.01 / 0.02 / 0.05 / 0.1: best near 0.05-0.1 (λ = 0.2 is not in the paper).",
          tuple((f"λ = {x:g} > λ = 0", f"λ = {x:g}", "λ = 0", 1) for x in LAMBDAS[1:])),
    Study("tau", "The temperature τ of the softmax over patches (Eq. 3), λ = 0.05", tuple(_tau(x) for x in TAUS),
          tuple((f"τ = {x:g}", "τ = 0.1") for x in TAUS if x != 0.1), ("τ = 0.1", "τ = 0.4"),
          "Table 9: Context59 42.3 / 42.7 / 42.9 / 43.1 / 40.0 for τ = 0.01 / 0.04 / 0.07 / 0.1 / 0.4: the low "
          "temperatures are within 0.8 of each other, τ = 0.4 is clearly worse (-3.1 against τ = 0.1).",
          (("τ = 0.4 < τ = 0.1", "τ = 0.4", "τ = 0.1", -1),)),
    Study("bank", "The demo's concept bank (the 13 category names) vs no bank (every noun chunk a concept)",
          (LIT_ROW, Setting("bank", demo.RunSettings()), Setting("no bank", demo.RunSettings(bank="none"))),
          (("bank", "no bank"), ("bank", "LiT"), ("no bank", "LiT")), ("LiT", "bank", "no bank"),
          "Table 4: filtering concepts with the bank of class names helps, compared with keeping every noun "
          "chunk of the caption.",
          (("bank > no bank", "bank", "no bank", 1),)),
    Study("fewshot", "The few-shot ceiling (Table 8): class means of the training scenes' dense tokens vs the text "
          "classifier of the same model",
          (Setting("SimZSS text", demo.RunSettings()), Setting("SimZSS few-shot", demo.RunSettings(), "fewshot"),
           Setting("LiT text", demo.LIT), Setting("LiT few-shot", demo.LIT, "fewshot")),
          (("SimZSS few-shot", "SimZSS text"), ("LiT few-shot", "LiT text"), ("SimZSS text", "LiT text")),
          ("SimZSS text", "SimZSS few-shot", "LiT text", "LiT few-shot"),
          "Table 8: the few-shot classifier (mean dense tokens of each class in the training set) reaches "
          "91.4 / 51.0 / 31.3 / 49.7 / 31.7 on VOC20 / Context59 / COCO-Stuff / Cityscapes / ADE20K against "
          "90.3 / 43.1 / 29.0 / 33.0 / 21.8 with SimZSS's text classifier: a ceiling well above the text.",
          (("few-shot > SimZSS text", "SimZSS few-shot", "SimZSS text", 1),
           ("few-shot > LiT text", "LiT few-shot", "LiT text", 1))),
]}


# --- statistics ---------------------------------------------------------------------------------------------
def t_quantile(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with ``df`` degrees of freedom (normal beyond 30)."""
    if df < 1:
        raise ValueError("an interval needs at least two seeds")
    return T975[df - 1] if df <= len(T975) else 1.96


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    x = np.asarray(values, np.float64)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Dict:
    """Mean of the per-seed differences a - b with its 95 % t-interval (None with one seed)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    mean, std = mean_std(d)
    if len(d) < 2:
        return {"mean": mean, "std": std, "n": len(d), "ci": None}
    half = t_quantile(len(d) - 1) * std / math.sqrt(len(d))
    return {"mean": mean, "std": std, "n": len(d), "ci": [mean - half, mean + half]}


def verdict(diff: Dict, sign: int) -> str:
    """'agrees' / 'disagrees' when the interval excludes 0 (on the expected side / the other), else 'not
    separated'; 'one seed' without an interval."""
    if diff["ci"] is None:
        return "one seed: no interval"
    lo, hi = diff["ci"]
    if lo > 0 or hi < 0:
        return "agrees" if (lo > 0) == (sign > 0) else "disagrees"
    return "not separated (the interval contains 0)"


def group_miou(summary: Dict, names: Sequence[str]) -> Optional[float]:
    """Mean IoU over the classes of ``names`` that the summary scored."""
    values = [summary["per_class"][n] for n in names if summary["per_class"].get(n) is not None]
    return float(np.mean(values)) if values else None


# --- runs and their evaluation -------------------------------------------------------------------------------
class Bench:
    """The demo's data, runs and evaluations under one output folder; each evaluation is computed once and
    stored next to its run (``evals/<run>.json``, keyed by the bench)."""

    def __init__(self, cfg: demo.DemoConfig, out: Path):
        self.cfg, self.out = cfg, out
        self.info = demo.make_data(cfg, out / "data")
        self.class_names = [c.name for c in synthetic.CATEGORIES]
        self._split = self._train_pairs = None
        # The few-shot rows depend on the frozen tower only (segmentation/fewshot.py): built once per tower, not once
        # per run.
        self._fewshot = {}

    @property
    def split(self):
        if self._split is None:
            self._split = demo.load_split(self.out / "data" / "eval")
        return self._split

    @property
    def train_pairs(self):
        """The training scenes with their masks (the same seeded scenes as the training shards)."""
        if self._train_pairs is None:
            root = self.out / "data" / "train-masks"
            if not (root / "classnames.txt").exists():
                synthetic.write_eval_split(root, self.cfg.train_images, seed=demo.TRAIN_SEED,
                                           size=self.cfg.image_size, split="training")
            self._train_pairs = demo.load_split(root, "training")
        return self._train_pairs

    def result(self, run: demo.RunSettings, seed: int, readouts: Sequence[str]) -> Dict[str, Dict]:
        """{readout: IoU summary} of one run, trained and evaluated if not done yet. Readouts: "ensemble" (the
        demo's prompts), "name" (the bare class name), "fewshot"."""
        checkpoint = demo.train(self.cfg, self.info, self.out, seed, run)
        path = self.out / "evals" / f"{run.run_name(seed)}.json"
        stored = json.loads(path.read_text()) if path.exists() else {}
        if stored.get("bench") != self.cfg.bench():
            stored = {"bench": self.cfg.bench(), "readouts": {}}
        todo = [r for r in readouts if r not in stored["readouts"]]
        if todo:
            stored["readouts"].update(self._evaluate(checkpoint, todo))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(stored, indent=2))
        return {r: stored["readouts"][r] for r in readouts}

    def _evaluate(self, checkpoint: Path, readouts: Sequence[str]) -> Dict[str, Dict]:
        from ..segmentation.fewshot import fewshot_classifier
        from ..weights.identity import tower_fingerprint
        model, tokenizer = demo.load_run(checkpoint)
        engine = demo.make_engine(model, self.cfg.image_size)
        out = {}
        for readout in readouts:
            templates = ("{}",) if readout == "name" else demo.DEMO_TEMPLATES
            if readout == "fewshot":
                # the feature cache's digest of the vision tower (the engine's settings are the bench's)
                key = tower_fingerprint(model, {}, "float32")
                if key not in self._fewshot:
                    self._fewshot[key] = fewshot_classifier(
                        engine, self.train_pairs, len(self.class_names),
                        fallback=lambda: demo.text_classifier(model, tokenizer, self.class_names))
                classifier = self._fewshot[key]
            else:
                classifier = demo.text_classifier(model, tokenizer, self.class_names, templates)
            out[readout] = demo.score(engine, classifier, self.split, self.class_names)[0]
        return out


def setting_metrics(bench: Bench, setting: Setting, seed: int) -> Dict[str, Optional[float]]:
    """The four numbers of one setting and seed (the bare name is a text readout: None for few-shot)."""
    readouts = ["fewshot"] if setting.readout == "fewshot" else ["ensemble", "name"]
    results = bench.result(setting.run, seed, readouts)
    main = results["fewshot" if setting.readout == "fewshot" else "ensemble"]
    return {"miou": main["miou"], "objects": group_miou(main, OBJECT_CLASSES),
            "stuff": group_miou(main, STUFF_CLASSES), "name": results["name"]["miou"] if "name" in results else None}


# --- the study ----------------------------------------------------------------------------------------------
def run_study(name: str, output: str = "demo_output", quick: bool = False,
              seeds: Optional[List[int]] = None) -> Path:
    """Run one study (module docstring) and write its report folder, which is returned."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; available: {', '.join(STUDIES)}")
    study = STUDIES[name]
    cfg = demo.DemoConfig.quick() if quick else demo.DemoConfig()
    if seeds:
        cfg.seeds = list(seeds)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    bench = Bench(cfg, out)
    settings = [s for s in study.settings if not quick or s.label in study.quick]
    values = {s.label: {m: [] for m in METRICS} for s in settings}
    for setting in settings:
        for seed in cfg.seeds:
            for metric, value in setting_metrics(bench, setting, seed).items():
                values[setting.label][metric].append(value)
    results = summarise(study, cfg, settings, values)
    results["seconds"] = round(time.time() - start, 1)
    return write_report(study, out / "studies" / name, results)


def summarise(study: Study, cfg: demo.DemoConfig, settings: Sequence[Setting], values: Dict) -> Dict:
    labels = [s.label for s in settings]
    rows = []
    for s in settings:
        stats = {m: (dict(zip(("mean", "std"), mean_std(v))) if None not in v else None)
                 for m, v in values[s.label].items()}
        rows.append({"label": s.label, "run": asdict(s.run), "readout": s.readout,
                     "runs": [s.run.run_name(seed) for seed in cfg.seeds], "per_seed": values[s.label],
                     "stats": stats})
    comparisons = []
    for a, b in study.comparisons:
        if a in labels and b in labels:
            comparisons.append({"a": a, "b": b, "diff": {
                m: paired_difference(values[a][m], values[b][m]) for m in METRICS
                if None not in values[a][m] and None not in values[b][m]}})
    checks = []
    for claim, a, b, sign in study.checks:
        if a in labels and b in labels:
            diff = paired_difference(values[a]["miou"], values[b]["miou"])
            checks.append({"claim": claim, "a": a, "b": b, "diff": diff, "verdict": verdict(diff, sign)})
    means = {r["label"]: r["stats"]["miou"]["mean"] for r in rows}
    best = max(means, key=means.get)
    # Is the best mean really best? Its paired differences against every other setting.
    against_best = [{"a": best, "b": other, "diff": paired_difference(values[best]["miou"], values[other]["miou"])}
                    for other in labels if other != best]
    return {"study": study.name, "title": study.title, "bench": cfg.bench(), "seeds": cfg.seeds,
            "eval_images": cfg.eval_images, "settings": rows, "comparisons": comparisons, "expected": study.expected,
            "checks": checks, "best": best, "against_best": against_best}


# --- the report ---------------------------------------------------------------------------------------------
def _cell(stats: Optional[Dict]) -> str:
    return "–" if stats is None else f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def _diff_cell(diff: Optional[Dict]) -> str:
    if diff is None:
        return "–"
    if diff["ci"] is None:
        return f"{diff['mean']:+.2f}"
    lo, hi = diff["ci"]
    mark = " *" if lo > 0 or hi < 0 else ""
    return f"{diff['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]{mark}"


def report_lines(results: Dict) -> List[str]:
    cfg = results["bench"]
    n, demo_seeds = len(results["seeds"]), len(demo.DemoConfig().seeds)
    lines = [f"# Study `{results['study']}`: {results['title']}", "",
             f"Bench (fixed before any result was seen): the demo's, unchanged — `simzss-tiny` with the fixed random "
             f"frozen tower, {cfg['train_images']} training scenes x {cfg['captions_per_image']} captions, "
             f"{cfg['epochs']} epochs of batch {cfg['batch_size']}, lr {cfg['lr']}; {results['eval_images']} held-out "
             f"scenes, {len(OBJECT_CLASSES)} object and {len(STUFF_CLASSES)} stuff classes; "
             f"seeds {', '.join(map(str, results['seeds']))}"
             f" (a seed fixes the text tower's initialisation and the data order: settings are paired by seed)"
             + ("" if n <= demo_seeds else
                f"; {n} seeds rather than the demo's {demo_seeds} (docs/studies.md, \"A sharper bench\": its tables use "
                "5, chosen before seeds 3 and 4 ran, because the demo's seeds separated almost nothing)") + ". "
             f"Time {results['seconds'] / 60:.1f} min (runs already in the output folder are reused).", "",
             f"Mean ± sample standard deviation over {n} seed{'s' if n > 1 else ''}. Objects / stuff: the mean IoU of "
             f"the {len(OBJECT_CLASSES)} object classes ({', '.join(OBJECT_CLASSES)}) / the {len(STUFF_CLASSES)} "
             f"backgrounds ({', '.join(STUFF_CLASSES)}), read from the same predictions as the ensemble mIoU. Bare "
             f"name: the class name alone as the prompt, instead of the demo's {len(demo.DEMO_TEMPLATES)}-prompt "
             "ensemble.", "",
             "| setting | " + " | ".join(METRICS.values()) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for row in results["settings"]:
        lines.append(f"| {row['label']} | " + " | ".join(_cell(row["stats"][m]) for m in METRICS) + " |")
    lines += ["", "Paired differences a − b (mean over seeds [95 % t-interval across seeds]; * = the interval "
              "excludes 0):", "", "| a − b | " + " | ".join(METRICS.values()) + " |",
              "|---" * (len(METRICS) + 1) + "|"]
    for c in results["comparisons"]:
        lines.append(f"| {c['a']} − {c['b']} | " + " | ".join(_diff_cell(c["diff"].get(m)) for m in METRICS) + " |")
    lines += ["", "Per seed, mIoU (ensemble):", "",
              "| setting | " + " | ".join(f"seed {s}" for s in results["seeds"]) + " |",
              "|---" * (n + 1) + "|"]
    for row in results["settings"]:
        lines.append(f"| {row['label']} | " + " | ".join(f"{v:.2f}" for v in row["per_seed"]["miou"]) + " |")
    lines += ["", "## The paper's trend and what this bench measured", "", f"Paper: {results['expected']}", "",
              "| paper's claim | measured a − b (ensemble mIoU) | reading |", "|---|---|---|"]
    for c in results["checks"]:
        lines.append(f"| {c['claim']} | {_diff_cell(c['diff'])} | {c['verdict']} |")
    best = results["best"]
    separated = [c["b"] for c in results["against_best"] if c["diff"]["ci"] and c["diff"]["ci"][0] > 0]
    not_separated = [c["b"] for c in results["against_best"] if c["b"] not in separated]
    lines += ["", f"Highest mean mIoU (ensemble): **{best}**. Its paired intervals exclude 0 against "
              f"{', '.join(separated) if separated else 'no other setting'}"
              + (f"; not against {', '.join(not_separated)}, which this bench cannot rank below it." if not_separated
                 else ".")]
    lines += ["", "Reading: 'agrees' / 'disagrees' only where the 95 % interval excludes 0; 'not separated' means "
              "this bench, with these seeds, cannot tell the settings apart, which is neither a confirmation nor a "
              "refutation of the paper. The bench is tiny (a random frozen tower, 13 classes): the paper's "
              "magnitudes are not expected, only its directions.", "",
              f"![{results['study']}]({results['study']}.png)", ""]
    return lines


def write_report(study: Study, folder: Path, results: Dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.md").write_text("\n".join(report_lines(results)))
    (folder / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    plot(results, folder / f"{study.name}.png")
    return folder


def plot(results: Dict, path: Path):
    """Per metric, each setting's seeds (dots) and mean ± std (bar)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["settings"]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.4), sharey=False)
    x = np.arange(len(rows))
    for ax, (metric, title) in zip(axes, METRICS.items()):
        for i, row in enumerate(rows):
            stats = row["stats"][metric]
            if stats is None:
                continue
            ax.errorbar(i, stats["mean"], yerr=stats["std"], fmt="o", color="C0", capsize=4)
            ax.plot([i] * len(row["per_seed"][metric]), row["per_seed"][metric], ".", color="0.5")
        ax.set_xticks(x, [r["label"] for r in rows], rotation=40, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("IoU (%)")
    fig.suptitle(f"{results['study']}: mean ± std over seeds (grey: each seed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_studies(names: Sequence[str], output: str = "demo_output", quick: bool = False,
                seeds: Optional[List[int]] = None) -> List[Path]:
    return [run_study(name, output, quick, seeds) for name in names]
