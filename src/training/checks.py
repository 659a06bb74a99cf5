"""What ``python -m training.main`` checks before it builds anything, each refusal one line (``ArgumentError``):
the stored concepts' provenance against ``--concept-bank``/``--spacy-model``, the shard list, the log folder, the
model name; and the resolved recipe that ``--dry-run`` prints.
"""
import logging
import os
import tarfile

from open_clip_train.data import expand_urls

from open_clip_simzss.concepts.bank import ConceptBank
from open_clip_simzss.concepts.provenance import make_provenance, provenance_mismatch
from open_clip_simzss.concepts.spacy_model import SpacyModelNotFoundError, require_spacy_model, spacy_model_identity
from open_clip_simzss.weights.build import VISION_WEIGHTS_ENV
from open_clip_simzss.weights.dvt import DENOISER_WEIGHTS_ENV
from open_clip_simzss.weights.read import one_line
from open_clip_simzss.weights.resolve import resolve_spec

from .data import first_concepts_record
from .params import ArgumentError


def check_stored_concepts(args, bank) -> tuple:
    """Compare the provenance of the first shard's first ``concepts.json`` with ``--concept-bank`` and
    ``--spacy-model``, in the main process before any data is loaded (a refusal raised in a loader worker would
    reach the user as a traceback). Raises ArgumentError on a mismatch; returns (logging level, line to log)."""
    flags = f"--concept-bank {args.concept_bank} --spacy-model {args.spacy_model}"
    if not args.train_data or args.lambda_concept == 0:
        return logging.DEBUG, "concepts: not used"
    if args.concept_source == "spacy":
        require_spacy_model_installed(args.spacy_model)
        return logging.INFO, f"concepts: extracted on the fly with {flags} (--concept-source spacy)"
    shard = expand_urls(args.train_data)[0][0]
    try:
        record = first_concepts_record(shard)
    except (OSError, tarfile.TarError, ValueError) as error:
        return logging.WARNING, f"concepts: could not read {shard} to check its concepts.json ({error}); not checked"
    fix = f"train with --concept-source spacy to extract them with {flags}, or re-run simzss-preprocess with these"
    if record is None:
        if args.concept_source == "stored":
            raise ArgumentError(f"--concept-source stored: the first sample of {shard} has no concepts.json; {fix}")
        require_spacy_model_installed(args.spacy_model)
        return logging.INFO, f"concepts: {shard} has no concepts.json, extracting them on the fly with {flags}"
    stored = record.get("provenance") if isinstance(record, dict) else None
    if not isinstance(stored, dict):
        return logging.WARNING, (f"concepts: the concepts.json of {shard} have no provenance (format version 1): "
                                 f"their concept bank and spaCy model cannot be checked against {flags}")
    mismatch = provenance_mismatch(stored, make_provenance(bank, spacy_model_identity(args.spacy_model)))
    if mismatch:
        raise ArgumentError(f"the concepts.json of {shard} were made with another {mismatch}: {fix}")
    return logging.INFO, f"concepts: the concepts.json of {shard} were made with {flags}"


def require_spacy_model_installed(name):
    """Refuse a missing spaCy model here, in one line, rather than as a traceback from a loader worker."""
    try:
        require_spacy_model(name)
    except SpacyModelNotFoundError as error:
        raise ArgumentError(str(error)) from None


def load_concept_bank(args):
    """``--concept-bank``, read at start so that a missing or broken file is refused before anything else."""
    try:
        return ConceptBank.from_spec(args.concept_bank)
    except ValueError as error:  # an empty entry; FileNotFoundError is already one line
        raise ArgumentError(str(error)) from None


def check_train_data(args):
    """Refuse ``--train-data`` that names no shard, a folder or missing files, before anything is built: the
    loader would otherwise repeat an empty pass forever. URLs (``pipe:``, ``s3://``) are left to the loader,
    which stops with one line when a pass gives no batch."""
    if not args.train_data:
        return
    urls, _ = expand_urls(args.train_data)
    if not urls:
        raise ArgumentError(f"--train-data {args.train_data}: names no shard")
    local = [url for url in urls if "://" not in url and not url.startswith("pipe:")]
    folders = [url for url in local if os.path.isdir(url)]
    if folders:
        raise ArgumentError(f"--train-data {folders[0]} is a folder: name its shards, e.g. "
                            f"'{os.path.join(folders[0], '{00000..00009}.tar')}'")
    missing = [url for url in local if not os.path.isfile(url)]
    if missing:
        raise ArgumentError(f"--train-data: {len(missing)} of {len(urls)} shards not found, e.g. {missing[0]}")


def check_logs(args):
    """``--logs`` must be a folder this process can write, checked before the model is built."""
    if not args.logs or args.logs.lower() == "none":
        return
    if os.path.exists(args.logs) and not os.path.isdir(args.logs):
        raise ArgumentError(f"--logs {args.logs} is a file, not a folder")
    existing = args.logs
    while not os.path.exists(existing):
        existing = os.path.dirname(os.path.abspath(existing))
    if not os.path.isdir(existing):
        raise ArgumentError(f"--logs {args.logs}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ArgumentError(f"--logs {args.logs}: {existing} is not writable (permission denied)")


def check_model(args):
    """An unknown ``--model`` in one line, before anything is built."""
    try:
        resolve_spec(args.model, args.cache_dir)
    except (ValueError, OSError) as error:
        raise ArgumentError(f"--model {args.model}: {one_line(error)}") from None


def world_size_from_environment() -> int:
    """The number of processes a launcher (torchrun, SLURM) announces, without initialising anything."""
    for name in ("WORLD_SIZE", "SLURM_NTASKS"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def denoiser_source(args) -> str:
    """Where the model's DVT denoiser weights will come from (``weights.build``'s order), without loading."""
    source = resolve_spec(args.model, args.cache_dir)
    model_cfg, checkpoint = source.model_cfg, source.weights
    denoiser_cfg = model_cfg["vision_cfg"].get("denoiser_cfg")
    if denoiser_cfg is None:
        if args.denoiser_weights:
            raise ArgumentError(f"--denoiser-weights given, but {args.model} has no DVT denoiser "
                                "(simzss-vitb14-dvt has one)")
        return "none (no DVT denoiser)"
    if checkpoint or args.pretrained:
        return f"from the SimZSS checkpoint {checkpoint or args.pretrained}"
    if args.denoiser_weights:
        return f"{args.denoiser_weights} (--denoiser-weights)"
    if os.environ.get(DENOISER_WEIGHTS_ENV):
        return f"{os.environ[DENOISER_WEIGHTS_ENV]} (${DENOISER_WEIGHTS_ENV})"
    if denoiser_cfg.get("hub_file"):
        return f"hf-hub:{denoiser_cfg['hub_file']} (downloaded when the model is built)"
    raise ArgumentError(f"{args.model} has a DVT denoiser but no weights for it: give --denoiser-weights FILE "
                        f"or set {DENOISER_WEIGHTS_ENV}=FILE")


def recipe(args, argv) -> list:
    """The resolved training recipe, as (name, value) lines: what --dry-run prints."""
    world = world_size_from_environment()
    global_batch = args.batch_size * world
    given = any(a == "--lr" or a.startswith("--lr=") for a in argv)
    how = "--lr" if given else "OpenCLIP's default for ViT models (no --lr given)"
    # The authors' trainer multiplies its --lr by global batch / 256: the flat value that gives this lr there.
    how += f"; the authors' flat --lr equivalent: {args.lr * 256 / global_batch:.3g} (x {global_batch} / 256)"
    steps = ""
    if args.train_num_samples:
        per_epoch = args.train_num_samples // global_batch
        steps = (f" ({args.warmup / max(per_epoch * args.epochs, 1):.1%} of {per_epoch * args.epochs} steps: "
                 f"{per_epoch} per epoch from --train-num-samples {args.train_num_samples})")
    vision = args.vision_weights or os.environ.get(VISION_WEIGHTS_ENV) or (
        "timm pretrained (hub)" if args.pretrained_image else "random (no --pretrained-image / --vision-weights)")
    return [
        ("model", args.model),
        ("simzss variant", args.simzss_variant),
        ("lambda (concept loss weight)", f"{args.lambda_concept:g}" + (" = LiT" if args.lambda_concept == 0 else "")),
        ("tau (patch softmax)", f"{args.concept_tau:g}"),
        ("T (concept classifier)", f"{args.concept_temperature:g}"),
        ("batch", f"{args.batch_size} per process x {world} processes = {global_batch} global"),
        ("lr", f"{args.lr:g} ({how})"),
        ("optimizer", f"{args.opt}, betas ({args.beta1:g}, {args.beta2:g}), eps {args.eps:g}, wd {args.wd:g}"),
        ("schedule", f"{args.lr_scheduler}, warm-up {args.warmup} steps{steps}"),
        ("epochs", str(args.epochs)),
        ("precision", args.precision),
        ("vision tower weights", vision),
        ("denoiser weights", denoiser_source(args)),
        ("checkpoint", args.pretrained or "none (text tower from scratch)"),
    ]
