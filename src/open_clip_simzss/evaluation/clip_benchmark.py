"""SimZSS in clip_benchmark: a model type, a 38-dataset suite and a results merger; the command is
``simzss-clip-benchmark`` (``python -m open_clip_simzss clip-benchmark``).

    simzss-clip-benchmark eval  --model simzss-vitb14 --checkpoint CKPT \\
        --dataset wds/imagenet1k --dataset_root DIR [any clip_benchmark eval flag]
    simzss-clip-benchmark suite --model simzss-vitb14 --checkpoint CKPT \\
        --dataset_root 'DIR/wds_{dataset_cleaned}' --output_dir results/simzss
    simzss-clip-benchmark merge SimZSS=results/simzss LiT=results/lit \\
        --output results/table --plot results/fig5.png
    simzss-clip-benchmark build ...   (clip_benchmark's own CSV builder)

``eval`` is clip_benchmark 1.6.2's CLI with one more ``--model_type``, ``simzss`` (the default here): image
features are the global token ``z̄_v`` (``SimZSS.encode_image``), text features ``g(EOS)``
(``SimZSS.encode_text``). clip_benchmark fixes its model types at import time (``TYPE2FUNC`` and the
``MODEL_TYPES`` list its command-line parser's ``choices`` point to), so ``register()`` adds ours to both before its CLI
is parsed. ``register()`` also repairs clip_benchmark's zero-shot ``accuracy()`` under NumPy >= 2.4 (see
``_topk_accuracy``). The checkpoint (``--checkpoint``, or clip_benchmark's ``--pretrained``) is anything
``open_clip_simzss.load_model`` takes; ``none`` (the default) builds the model with random weights, for smoke
tests only, and says so.

Output locations (``--output``'s folder, ``--output_dir``, merge's ``--output`` and ``--plot``) are checked before
any model or result is read; the suite's summary, tables and plots are written atomically (``atomic``), so a
full disk leaves no partial file. The per-dataset JSON files are written by clip_benchmark itself.
"""
import contextlib
import csv
import glob
import io
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..atomic import WriteError, check_output, save_figure, write_file, write_json
from ..compat import accuracy_is_broken, topk_correct
from ..weights.load import load_model, load_tokenizer
from ..weights.read import CheckpointError
from ..weights.resolve import checkpoint_spec, source_of_spec

MODEL_TYPE = "simzss"
DATASETS_FILE = Path(__file__).parent.parent / "data" / "clip_benchmark_datasets.txt"
# `--pretrained` values meaning "no checkpoint: random text tower and vision tower" (smoke tests only).
NO_WEIGHTS = ("", "none", "random")
PROG = "simzss-clip-benchmark"

logger = logging.getLogger(__name__)


class BenchmarkInputError(ValueError):
    """Input that cannot work (a missing dataset root, malformed results); the message is one line."""


# --------------------------------------------------------------------------------------------------------
# The model type
# --------------------------------------------------------------------------------------------------------
def resolve_pretrained(model_name: Optional[str], pretrained: Optional[str]) -> Optional[str]:
    """The checkpoint reference, or None for random weights (``none``/``random``/empty). Anything that does not
    resolve is an error (CheckpointError): a mistyped path must not silently evaluate a random model."""
    if pretrained is None or pretrained.strip().lower() in NO_WEIGHTS:
        return None
    checkpoint_spec(model_name, pretrained)
    return pretrained


# One loaded model is kept: the suite evaluates one model on 38 datasets and clip_benchmark reloads the
# model for every dataset.
_LOADED: Dict[tuple, tuple] = {}


def load_simzss(model_name: str, pretrained: Optional[str] = None, cache_dir: Optional[str] = None,
                device="cpu"):
    """clip_benchmark's loader signature: returns (model, eval transform, tokenizer)."""
    key = (model_name, pretrained, cache_dir, str(device))
    if key not in _LOADED:
        model, preprocess = load_model(model_name, resolve_pretrained(model_name, pretrained), device=device,
                                       cache_dir=cache_dir)
        if model.source.random_weights:
            logger.warning(f"{model_name}: no checkpoint given (--pretrained {pretrained!r}): evaluating RANDOM "
                           "weights, the numbers are meaningless (smoke test only)")
        _LOADED.clear()
        _LOADED[key] = (model, preprocess, load_tokenizer(model, cache_dir))
    return _LOADED[key]



def _topk_accuracy(output, target, topk=(1,)):
    """Top-k accuracy, the same numbers as clip_benchmark 1.6.2's ``zeroshot_classification.accuracy``.

    Why this exists: clip_benchmark converts a count with ``float(t.sum(0, keepdim=True).cpu().numpy())``,
    i.e. ``float()`` of a 1-element 1-D array. NumPy deprecated that in 1.25 and NumPy 2.4 turned it into
    ``TypeError: only 0-dimensional arrays can be converted to Python scalars``. Only the scalar read differs
    here; ``register()`` installs this function only when the original really fails.
    """
    return [count / len(target) for count in topk_correct(output, target, topk)]


# clip_benchmark's own accuracy(), kept when register() replaces it (for tests and inspection).
original_accuracy = None


def register():
    """Add ``--model_type simzss`` to clip_benchmark and fix its accuracy() under NumPy >= 2.4. Idempotent."""
    global original_accuracy
    try:
        import clip_benchmark.models as cb_models
        from clip_benchmark.metrics import zeroshot_classification as cb_zeroshot
    except ImportError as e:
        raise BenchmarkInputError(f"clip_benchmark is not installed ({e}): pip install 'open_clip_simzss[benchmark]'"
                                  ) from None
    cb_models.TYPE2FUNC[MODEL_TYPE] = load_simzss
    # cli.py imported this very list and uses it as its parser's `choices`: extend it in place.
    if MODEL_TYPE not in cb_models.MODEL_TYPES:
        cb_models.MODEL_TYPES.append(MODEL_TYPE)
    # evaluate() looks `accuracy` up in its module's globals at call time, so replacing it there is enough.
    if cb_zeroshot.accuracy is not _topk_accuracy and accuracy_is_broken(cb_zeroshot.accuracy):
        original_accuracy, cb_zeroshot.accuracy = cb_zeroshot.accuracy, _topk_accuracy


# --------------------------------------------------------------------------------------------------------
# eval: clip_benchmark's CLI
# --------------------------------------------------------------------------------------------------------
def _has_flag(argv: Sequence[str], *flags: str) -> bool:
    return any(a == f or a.startswith(f + "=") for a in argv for f in flags)


def _parse_clip_benchmark(argv: List[str]):
    """clip_benchmark's own parser (it reads sys.argv), so every one of its flags keeps working. Its parse
    errors (a usage dump, then ``prog: error: ...``) become one line (BenchmarkInputError)."""
    from clip_benchmark import cli
    saved = sys.argv
    sys.argv = [PROG, *argv]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return cli.get_parser_args()[1]
    except SystemExit as stop:
        if stop.code in (0, None):
            raise
        lines = errors.getvalue().strip().splitlines() or ["error: bad arguments"]
        raise BenchmarkInputError(lines[-1].split("error: ", 1)[-1]) from None
    finally:
        sys.argv = saved


def dataset_root_for(dataset: str, root_template: str) -> str:
    """``--dataset_root`` formatted the way clip_benchmark does ({dataset}, {dataset_cleaned})."""
    name = dataset.replace("wds/", "", 1) if dataset.startswith("wds/") else dataset
    try:
        return root_template.format(dataset=name, dataset_cleaned=name.replace("/", "-"))
    except (KeyError, IndexError, ValueError) as e:
        raise BenchmarkInputError(f"bad --dataset_root template {root_template!r}: only {{dataset}} and "
                         f"{{dataset_cleaned}} can be used ({e!r})") from None


def wds_root_problem(dataset: str, root_template: str, split: str = "test") -> Optional[str]:
    """Why a local WebDataset root cannot be read, or None (also for URLs and non-wds datasets)."""
    if not dataset.startswith("wds/"):
        return None
    root = dataset_root_for(dataset, root_template)
    if "://" in root:
        return None
    if not os.path.isdir(root):
        return f"dataset root not found: {root}"
    if not os.path.isfile(os.path.join(root, split, "nshards.txt")):
        return f"{root} is not a clip_benchmark WebDataset: no {split}/nshards.txt"
    return None


def _check_output_folder(folder: str):
    """A results folder this process cannot write to is bad input, found before any model is loaded."""
    try:
        check_output(folder, folder=True)
    except WriteError as e:
        raise BenchmarkInputError(str(e)) from None


def _validate_eval(args):
    """Fail before any model or data is loaded when the input cannot work."""
    if args.model_type != MODEL_TYPE or args.pretrained_model:
        return  # clip_benchmark's own model types and collections check themselves
    for model in args.model:
        source_of_spec(model, args.model_cache_dir)
        for pretrained in args.pretrained:
            resolve_pretrained(model, pretrained)
    folder = os.path.dirname(args.output)
    if folder and "{" not in folder:  # a templated folder is known per dataset only
        _check_output_folder(folder)
    datasets = args.dataset if isinstance(args.dataset, list) else [args.dataset]
    for dataset in datasets:
        if os.path.isfile(dataset):
            continue  # a dataset-list file; its entries are checked by clip_benchmark
        problem = wds_root_problem(dataset, args.dataset_root, args.split)
        if problem:
            raise BenchmarkInputError(f"{dataset}: {problem}")


def run_eval(argv: List[str]) -> int:
    """``eval``: clip_benchmark eval with SimZSS registered and defaulted (``--model_type simzss``);
    ``--checkpoint`` is our name for clip_benchmark's ``--pretrained``."""
    argv = ["--pretrained" + a[len("--checkpoint"):] if a == "--checkpoint" or a.startswith("--checkpoint=") else a
            for a in argv]
    if not _has_flag(argv, "--model_type"):
        argv += ["--model_type", MODEL_TYPE]
    if not _has_flag(argv, "--pretrained", "--pretrained_model"):
        argv += ["--pretrained", "none"]  # clip_benchmark's default (laion400m_e32) is an OpenCLIP tag
    register()
    args = _parse_clip_benchmark(["eval", *argv])
    _validate_eval(args)
    from clip_benchmark import cli
    cli.main_eval(args)
    return 0


def run_build(argv: List[str]) -> int:
    """``build``: clip_benchmark's CSV builder, unchanged."""
    register()
    from clip_benchmark import cli
    cli.main_build(_parse_clip_benchmark(["build", *argv]))
    return 0


# --------------------------------------------------------------------------------------------------------
# suite: the 38 zero-shot classification datasets of clip_benchmark's webdataset list
# --------------------------------------------------------------------------------------------------------
def read_dataset_list(path=DATASETS_FILE) -> List[str]:
    """One dataset name per line (clip_benchmark's format); blank lines and ``#`` comments are ignored."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f]
    except OSError as e:
        raise BenchmarkInputError(f"cannot read dataset list {path}: {e.strerror}") from None
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise BenchmarkInputError(f"dataset list {path} is empty")
    return names


# Flags the suite sets itself for every dataset.
SUITE_OWNED = ("--dataset", "--output", "--model_type", "--pretrained_model")


def run_suite(model: str, checkpoint: str, dataset_root: str, output_dir: str, datasets_file: str = str(DATASETS_FILE),
              split: str = "test", passthrough: Sequence[str] = ()) -> int:
    """``suite``: one clip_benchmark eval per dataset; missing roots are skipped, failures don't stop it.
    ``passthrough``: more clip_benchmark eval flags (e.g. --batch_size). Returns the exit status."""
    owned = [f for f in SUITE_OWNED if _has_flag(passthrough, f)]
    if owned:
        raise BenchmarkInputError(f"{', '.join(owned)} cannot be passed to the suite (it sets them per dataset)")

    datasets = read_dataset_list(datasets_file)
    dataset_root_for("wds/x", dataset_root)  # template errors surface now, not 38 times
    _check_output_folder(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    # The output folder names the run; braces in it must survive clip_benchmark's str.format.
    out_dir = output_dir.replace("{", "{{").replace("}", "}}")
    output = os.path.join(out_dir, "{dataset}_{language}_{task}.json")
    common = ["--model", model, "--pretrained", checkpoint, "--model_type", MODEL_TYPE,
              "--dataset_root", dataset_root, "--split", split, "--output", output, *passthrough]

    done, skipped, failed = [], [], []
    for i, dataset in enumerate(datasets, 1):
        problem = wds_root_problem(dataset, dataset_root, split)
        if problem:
            logger.warning(f"[{i}/{len(datasets)}] skip {dataset}: {problem}")
            skipped.append({"dataset": dataset, "reason": problem})
            continue
        logger.info(f"[{i}/{len(datasets)}] {dataset}")
        try:
            run_eval([*common, "--dataset", dataset])
            done.append(dataset)
        except (BenchmarkInputError, CheckpointError):
            raise  # the model or checkpoint is wrong: every other dataset would fail the same way
        except Exception as e:  # one broken dataset must not end the suite
            logger.error(f"[{i}/{len(datasets)}] {dataset} failed: {type(e).__name__}: {e}")
            failed.append({"dataset": dataset, "reason": f"{type(e).__name__}: {e}"})

    summary = {"model": model, "pretrained": checkpoint, "done": done, "skipped": skipped,
               "failed": failed}
    write_json(os.path.join(output_dir, "suite_summary.json"), summary, indent=2)
    print(f"suite: {len(done)} evaluated, {len(skipped)} skipped (missing root), {len(failed)} failed")
    for entry in skipped + failed:
        print(f"  {entry['dataset']}: {entry['reason']}")
    if done:
        label = Path(output_dir).name or "model"
        table = merge_runs({label: load_results(output_dir)}, datasets=datasets)
        prefix = os.path.join(output_dir, "results")
        write_table(table, prefix)
        print(f"table: {prefix}.csv, {prefix}.md")
    return 0 if done and not failed else 1


# --------------------------------------------------------------------------------------------------------
# merge: per-dataset table (CSV + markdown, with the average) and a per-dataset bar chart
# --------------------------------------------------------------------------------------------------------
def short_name(dataset: str) -> str:
    """``wds/vtab/flowers`` -> ``vtab/flowers``: the same dataset with or without WebDataset."""
    return dataset[4:] if dataset.startswith("wds/") else dataset


def pick_metric(metrics: dict, metric: str = "auto") -> Optional[Tuple[str, float]]:
    """(name, value) of the metric to report. ``auto``: top-1 accuracy, or mAP for multi-label datasets
    (voc2007_multilabel); retrieval results have neither and are left out."""
    names = ("acc1", "mean_average_precision") if metric == "auto" else (metric,)
    for name in names:
        value = metrics.get(name)
        if isinstance(value, (int, float)) and not math.isnan(value):
            return name, float(value)
    return None


def _read_result_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise BenchmarkInputError(f"cannot read results file {path}: {e}") from None
    if not isinstance(data, dict) or "dataset" not in data or not isinstance(data.get("metrics"), dict):
        return None
    return data


def _read_table_csv(path: str, label: Optional[str]) -> Dict[str, Tuple[str, float]]:
    """A column of a table written by ``write_table`` (values in %), back to fractions."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in (rows[0].keys() if rows else []) if c not in ("dataset", "metric") and " - " not in c]
    if label not in columns:
        if len(columns) != 1:
            raise BenchmarkInputError(f"{path}: choose a column with LABEL=PATH, one of {columns}")
        label = columns[0]
    return {r["dataset"]: (r["metric"], float(r[label]) / 100) for r in rows
            if r["dataset"] != "Average" and r[label] not in ("", None)}


def load_results(path: str, metric: str = "auto", label: Optional[str] = None) -> Dict[str, Tuple[str, float]]:
    """``{dataset: (metric name, value in [0, 1])}`` from a folder of clip_benchmark JSON results, one JSON
    file, a glob, or a CSV table written by ``merge``. One result per dataset: a folder mixing models is an
    error rather than a silent pick."""
    if path.endswith(".csv") and os.path.isfile(path):
        return _read_table_csv(path, label)
    if os.path.isdir(path):
        files, explicit = sorted(glob.glob(os.path.join(path, "*.json"))), False
    elif os.path.isfile(path):
        files, explicit = [path], True
    else:
        files, explicit = sorted(glob.glob(path)), True
        if not files:
            raise BenchmarkInputError(f"results not found: {path}")
    results, sources = {}, {}
    for file in files:
        data = _read_result_json(file)
        if data is None:
            if explicit:
                raise BenchmarkInputError(f"{file} is not a clip_benchmark result (needs 'dataset' and 'metrics')")
            continue  # e.g. suite_summary.json next to the results
        picked = pick_metric(data["metrics"], metric)
        if picked is None:
            logger.info(f"{file}: no {metric} metric ({data.get('task', '?')}), left out")
            continue
        name = short_name(data["dataset"])
        if name in results:
            raise BenchmarkInputError(f"two results for {name}: {sources[name]} and {file} (one model per results folder)")
        results[name], sources[name] = picked, file
    if not results:
        raise BenchmarkInputError(f"no classification results in {path}")
    return results


def merge_runs(runs: Dict[str, Dict[str, Tuple[str, float]]], datasets: Optional[Sequence[str]] = None) -> dict:
    """The table: rows (dataset, metric, {run: value}) ordered as ``datasets`` (default: the shipped list),
    others after in alphabetical order, and per-run averages over the datasets *every* run has, so that
    averages compare like with like."""
    order = [short_name(d) for d in (datasets if datasets is not None else read_dataset_list())]
    names = set().union(*(r.keys() for r in runs.values()))
    ranked = sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))
    rows = []
    for name in ranked:
        metric = next(r[name][0] for r in runs.values() if name in r)
        rows.append({"dataset": name, "metric": metric,
                     "values": {label: r[name][1] for label, r in runs.items() if name in r}})
    common = [row for row in rows if len(row["values"]) == len(runs)]
    average = {label: sum(row["values"][label] for row in common) / len(common) for label in runs} if common else {}
    missing = [row["dataset"] for row in rows if len(row["values"]) < len(runs)]
    return {"labels": list(runs), "rows": rows, "average": average, "n_common": len(common), "missing": missing}


def _delta_label(labels: List[str]) -> Optional[str]:
    return f"{labels[0]} - {labels[1]}" if len(labels) == 2 else None


def _table_lines(table: dict, fmt) -> List[List[str]]:
    """Rows of cells (header first) with values in %, formatted by ``fmt``; missing values are empty."""
    labels = table["labels"]
    delta = _delta_label(labels)
    lines = [["dataset", "metric", *labels] + ([delta] if delta else [])]
    for row in table["rows"] + [{"dataset": "Average", "metric": "", "values": table["average"]}]:
        values = [row["values"].get(label) for label in labels]
        cells = [fmt(100 * v) if v is not None else "" for v in values]
        if delta:
            cells.append(fmt(100 * (values[0] - values[1])) if None not in values else "")
        lines.append([row["dataset"], row["metric"], *cells])
    return lines


def write_table(table: dict, prefix: str) -> Tuple[str, str]:
    """``PREFIX.csv`` (2 decimals) and ``PREFIX.md`` (1 decimal, like the paper), values in %; each written
    atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    csv_path, md_path = prefix + ".csv", prefix + ".md"
    rows = io.StringIO(newline="")
    csv.writer(rows).writerows(_table_lines(table, lambda v: f"{v:.2f}"))
    write_file(csv_path, lambda handle: handle.write(rows.getvalue().encode("utf-8")))
    lines = _table_lines(table, lambda v: f"{v:.1f}")
    md = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
    md += ["| " + " | ".join(cell or "–" for cell in line) + " |" for line in lines[1:]]
    md.append("")
    md.append(f"Values in %. Average over the {table['n_common']} dataset(s) every run has.")
    if table["missing"]:
        md.append(f"Left out of the average (missing in some run): {', '.join(table['missing'])}.")
    text = "\n".join(md) + "\n"
    write_file(md_path, lambda handle: handle.write(text.encode("utf-8")))
    return csv_path, md_path


def plot_table(table: dict, path: str):
    """Grouped bars per dataset (one bar per run, average last), like the paper's Fig. 5."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    labels = table["labels"]
    groups = [(row["dataset"], row["values"]) for row in table["rows"]] + [("Average", table["average"])]
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(groups) * max(1, len(labels)) + 2), 4.5))
    for i, label in enumerate(labels):
        xs = [g + (i - (len(labels) - 1) / 2) * width for g, (_, values) in enumerate(groups) if label in values]
        ys = [100 * values[label] for _, values in groups if label in values]
        ax.bar(xs, ys, width=width, label=label)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([name for name, _ in groups], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("zero-shot accuracy (%)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        save_figure(fig, path, dpi=150)
    finally:
        plt.close(fig)


def parse_run(spec: str) -> Tuple[str, str]:
    label, sep, path = spec.partition("=")
    if not sep:  # a bare path: its folder or file name is the label
        path, label = spec, Path(spec.rstrip("/")).stem
    if not label or not path:
        raise BenchmarkInputError(f"bad run {spec!r}: expected LABEL=PATH")
    return label, path
