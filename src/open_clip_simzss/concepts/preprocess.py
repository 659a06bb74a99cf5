"""Add concept annotations to img2dataset WebDataset shards (README, "Concepts in captions"); the command is
``simzss-preprocess`` (``python -m open_clip_simzss preprocess``).

    simzss-preprocess --input 'coco/{00000..00295}.tar' --output coco_concepts \\
        [--workers N] [--spacy-model en_core_web_sm] [--concept-bank default|none|PATH]

Every output shard has the same name and the same members, byte for byte and in the same order, as its input
shard, plus one ``<key>.concepts.json`` member per sample: the record of ``ConceptExtractor.annotate`` for the
sample's ``txt`` caption (JSON, schema version 2, with the ``provenance`` that training checks against its
``--concept-bank`` and ``--spacy-model``; ``concepts`` is empty when the caption is missing or is not UTF-8).
Images are not decoded: a corrupt image is counted and copied as it is, for the training loader to skip.

- Resumable: a shard is written to a temporary file unique to the process (``.<name>.<pid>.tmp``, fsynced) and
  renamed when complete, after its statistics (``stats/<name>.json``); shards whose output exists are skipped.
  Workers die with the main process, and a rerun never writes the temporary files of an earlier one.
- A shard must end with the tar end-of-archive marker: one cut short or with a corrupt header mid-archive is
  reported as failed, never written with fewer samples.
- One shard per worker process (``--workers``, default: the CPUs this process may use); each worker runs
  ``nlp.pipe`` with one process, which is spaCy's fastest setting per core.
- SLURM arrays: ``--shard-index/--num-shards`` (default ``SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN`` and
  ``SLURM_ARRAY_TASK_COUNT``) take every num-shards-th shard of the sorted list, starting at shard-index.
- Summary on stderr (this run's captions/s; over all finished shards of the slice: share of captions with at
  least one concept, the 20 most frequent concepts) and in ``preprocess_stats.json`` in the output directory
  (``preprocess_stats.<index>-of-<num>.json`` for one task of an array).
- Bad input (no shard matches, output not writable, unknown spaCy model, missing bank file): one
  ``error: ...`` line on stderr and exit status 2. A shard that cannot be read to its end is reported and
  left without output (exit status 1 once the other shards are done).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import multiprocessing
import os
import sys
import tarfile
import time
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

from ..atomic import remove_stale_temporaries, temporary_name, write_json
from ..images import IMAGE_EXTENSIONS
from .bank import ConceptBank
from .extract import ConceptExtractor
from .provenance import CONCEPTS_JSON_VERSION
from .shards import Sample, expand_shard_patterns, iter_samples, open_checked_stream, split_member_name
from .spacy_model import DEFAULT_SPACY_MODEL

CONCEPTS_MEMBER_SUFFIX = "concepts.json"
CAPTION_SUFFIX = "txt"
TOP_CONCEPTS_IN_SUMMARY = 20
TOP_CONCEPTS_IN_STATS_FILE = 1000
STATS_DIRECTORY = "stats"


class PreprocessError(ValueError):
    """Input that cannot be preprocessed (no shard, unwritable output, clashing names); one line."""


# --------------------------------------------------------------------------------------------------------
# Shard lists
# --------------------------------------------------------------------------------------------------------
def shard_slice_from_environment() -> Tuple[int, int]:
    """(shard_index, num_shards) of this SLURM array task, (0, 1) outside an array."""
    task_id = os.environ.get("SLURM_ARRAY_TASK_ID")
    task_count = os.environ.get("SLURM_ARRAY_TASK_COUNT")
    if task_id is None or task_count is None:
        return 0, 1
    # Arrays may start anywhere (--array=1-8): index from the first task id.
    return int(task_id) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0")), int(task_count)


# --------------------------------------------------------------------------------------------------------
# One shard
# --------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ShardStats:
    shard: str
    samples: int = 0
    captions: int = 0  # samples with a UTF-8 caption (possibly empty)
    captions_with_concepts: int = 0
    concepts: int = 0
    missing_captions: int = 0
    undecodable_captions: int = 0
    unreadable_images: int = 0  # samples whose image header PIL cannot read (copied through all the same)
    seconds: float = 0.0
    concept_counts: Dict[str, int] = dataclasses.field(default_factory=dict)


def _decode_caption(sample: Sample, stats: ShardStats) -> Optional[str]:
    raw = sample.member(CAPTION_SUFFIX)
    if raw is None:
        stats.missing_captions += 1
        return None
    try:
        caption = raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.undecodable_captions += 1
        return None
    stats.captions += 1
    return caption


def _image_is_readable(sample: Sample) -> bool:
    """Whether PIL recognises the sample's image. Only the header is parsed: decoding every image would
    cost more than the captions, and the training loader skips undecodable images anyway."""
    from PIL import Image, UnidentifiedImageError

    for info, data in sample.members:
        if data is not None and split_member_name(info.name)[1].lower() in IMAGE_EXTENSIONS:
            try:
                Image.open(io.BytesIO(data)).close()
            except (UnidentifiedImageError, OSError, ValueError):
                return False
    return True


def _concepts_member(sample: Sample, record: dict) -> Tuple[tarfile.TarInfo, bytes]:
    payload = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    first = sample.members[0][0]
    info = tarfile.TarInfo(f"{sample.key}.{CONCEPTS_MEMBER_SUFFIX}")
    info.size = len(payload)
    # Take the sample's own metadata so that reprocessing the same input gives the same bytes.
    info.mtime, info.mode, info.uid, info.gid = first.mtime, 0o644, first.uid, first.gid
    info.uname, info.gname = first.uname, first.gname
    return info, payload


def _write_batch(batch: List[Sample], extractor: ConceptExtractor, writer: tarfile.TarFile, stats: ShardStats,
                 batch_size: int) -> None:
    captions = [_decode_caption(sample, stats) if sample.key else None for sample in batch]
    records = iter(extractor.annotate_many([c for c in captions if c is not None], batch_size=batch_size))
    for sample, caption in zip(batch, captions):
        if caption is None:
            record = extractor.record("", [])
        else:
            record = next(records)
            if record["concepts"]:
                stats.captions_with_concepts += 1
            stats.concepts += len(record["concepts"])
            for concept in record["concepts"]:
                stats.concept_counts[concept["text"]] = stats.concept_counts.get(concept["text"], 0) + 1
        for info, data in sample.members:
            if split_member_name(info.name)[1] == CONCEPTS_MEMBER_SUFFIX:
                continue  # an older annotation of an already processed shard is replaced
            writer.addfile(info, io.BytesIO(data) if data is not None else None)
        if sample.key:
            info, payload = _concepts_member(sample, record)
            writer.addfile(info, io.BytesIO(payload))
            stats.samples += 1
            stats.unreadable_images += not _image_is_readable(sample)


def stats_path_for(output_path: str) -> str:
    """Where the statistics of one output shard live: ``<output dir>/stats/<shard name>.json``."""
    directory, name = os.path.split(output_path)
    return os.path.join(directory, STATS_DIRECTORY, f"{name}.json")


def process_shard(input_path: str, output_path: str, extractor: ConceptExtractor, batch_size: int = 256,
                  samples_per_batch: int = 512) -> ShardStats:
    """Annotate one shard into ``output_path``.

    The shard is written to a temporary file of this process (``atomic.temporary_name``), fsynced and renamed
    once complete, after its statistics (``stats_path_for``), so an existing output always is a finished one.
    An input that does not end properly raises TruncatedArchiveError (no output).
    """
    stats = ShardStats(shard=os.path.basename(output_path))
    start = time.perf_counter()
    temporary = str(temporary_name(output_path))
    write_mode = "w:gz" if output_path.endswith((".gz", ".tgz")) else "w"
    try:
        # Stream mode reads the tar once, front to back, without seeking (and handles .tar.gz).
        with open_checked_stream(input_path) as reader, tarfile.open(temporary, write_mode) as writer:
            batch: List[Sample] = []
            for sample in iter_samples(reader):
                batch.append(sample)
                if len(batch) == samples_per_batch:
                    _write_batch(batch, extractor, writer, stats, batch_size)
                    batch = []
            _write_batch(batch, extractor, writer, stats, batch_size)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        stats.seconds = round(time.perf_counter() - start, 3)
        os.makedirs(os.path.dirname(stats_path_for(output_path)), exist_ok=True)
        write_json(stats_path_for(output_path), dataclasses.asdict(stats), ensure_ascii=False, indent=1)
        os.replace(temporary, output_path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return stats


# --------------------------------------------------------------------------------------------------------
# Workers: one shard at a time each
# --------------------------------------------------------------------------------------------------------
_WORKER: Dict[str, object] = {}


def _die_with_parent() -> None:
    """Linux: this worker gets SIGTERM when the main process dies (even by SIGKILL), instead of finishing its
    shard alone. Elsewhere a no-op; the per-process temporary names still keep a rerun from racing it."""
    if sys.platform != "linux":
        return
    import ctypes
    import signal
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _init_worker(extractor: Optional[ConceptExtractor], spacy_model: str, bank: ConceptBank, batch_size: int,
                 in_pool: bool = False) -> None:
    if in_pool:
        _die_with_parent()
    # Forked workers inherit the parent's extractor; spawned ones (no fork on the platform) load their own.
    _WORKER["extractor"] = extractor if extractor is not None else ConceptExtractor(spacy_model, bank=bank)
    _WORKER["batch_size"] = batch_size


def _process_job(job: Tuple[str, str]) -> Tuple[Optional[ShardStats], Optional[str]]:
    input_path, output_path = job
    try:
        return process_shard(input_path, output_path, _WORKER["extractor"], _WORKER["batch_size"]), None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        # A shard that cannot be read to the end (or written: a full disk) produces no output: a later run
        # retries it.
        return None, f"{input_path}: {type(error).__name__}: {error}"


# --------------------------------------------------------------------------------------------------------
# A run over many shards
# --------------------------------------------------------------------------------------------------------
def _check_output_directory(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise PreprocessError(f"output directory {path!r} is not writable ({error.strerror or error})") from None


def _plan(inputs: Sequence[str], output: str, shard_index: Optional[int], num_shards: Optional[int]
          ) -> Tuple[List[Tuple[str, str]], List[str], int, int]:
    """(jobs still to run, every output path of this slice, shard index, number of shards)."""
    shards = expand_shard_patterns(inputs)
    if not shards:
        raise PreprocessError(f"no input shard matches {' '.join(inputs)}")
    env_index, env_count = shard_slice_from_environment()
    index = env_index if shard_index is None else shard_index
    count = env_count if num_shards is None else num_shards
    if count < 1 or not 0 <= index < count:
        raise PreprocessError(f"--shard-index must be in [0, --num-shards); got {index} of {count}")
    shards = shards[index::count]
    outputs = [os.path.join(output, os.path.basename(shard)) for shard in shards]
    repeated = [name for name, n in collections.Counter(outputs).items() if n > 1]
    if repeated:
        raise PreprocessError(f"input shards from different directories share the output name {repeated[0]!r}")
    for shard, output in zip(shards, outputs):
        if os.path.abspath(shard) == os.path.abspath(output):
            raise PreprocessError(f"--output would overwrite the input shard {shard}")
    jobs = [(shard, output) for shard, output in zip(shards, outputs) if not os.path.exists(output)]
    for _, output_path in jobs:  # what killed runs left behind
        remove_stale_temporaries(output_path)
    return jobs, outputs, index, count


def _load_shard_stats(output_path: str) -> Optional[ShardStats]:
    try:
        with open(stats_path_for(output_path), encoding="utf-8") as handle:
            return ShardStats(**json.load(handle))
    except (OSError, ValueError, TypeError):
        return None  # e.g. a shard written by another tool: it is left out of the totals


def _summarize(shards: List[ShardStats]) -> dict:
    counts: collections.Counter = collections.Counter()
    for shard in shards:
        counts.update(shard.concept_counts)
    totals = {
        field: sum(getattr(shard, field) for shard in shards)
        for field in ("samples", "captions", "captions_with_concepts", "concepts", "missing_captions",
                      "undecodable_captions", "unreadable_images")
    }
    captions = totals["captions"]
    return {
        "shards": len(shards),
        **totals,
        "share_with_concepts": round(totals["captions_with_concepts"] / captions, 4) if captions else None,
        "distinct_concepts": len(counts),
        "top_concepts": counts.most_common(TOP_CONCEPTS_IN_STATS_FILE),
    }


def _print_summary(summary: dict) -> None:
    run_stats = summary["this_run"]
    print(
        f"this run: {run_stats['shards_processed']} shards, {run_stats['captions']} captions in "
        f"{run_stats['seconds']:.1f} s ({run_stats['captions_per_second']:.0f} captions/s); "
        f"{run_stats['shards_skipped']} shards already done, {len(run_stats['shards_failed'])} failed",
        file=sys.stderr,
    )
    share = summary["share_with_concepts"]
    print(
        f"all {summary['shards']} finished shards: {summary['samples']} samples, {summary['captions']} captions, "
        f"{share * 100 if share is not None else 0:.1f} % with at least one concept, {summary['concepts']} "
        f"concepts ({summary['distinct_concepts']} distinct); captions missing {summary['missing_captions']}, "
        f"not UTF-8 {summary['undecodable_captions']}; unreadable images {summary['unreadable_images']}",
        file=sys.stderr,
    )
    top = summary["top_concepts"][:TOP_CONCEPTS_IN_SUMMARY]
    if top:
        print("most frequent concepts: " + ", ".join(f"{text} ({n})" for text, n in top), file=sys.stderr)
    for message in run_stats["shards_failed"]:
        print(f"failed: {message}", file=sys.stderr)


def preprocess_shards(inputs: Sequence[str], output: str, workers: Optional[int] = None,
                      spacy_model: str = DEFAULT_SPACY_MODEL, concept_bank: str = "default", batch_size: int = 256,
                      shard_index: Optional[int] = None, num_shards: Optional[int] = None) -> int:
    """Annotate every shard of ``inputs`` (brace patterns, globs) into ``output`` (module docstring); returns
    the exit status: 0, or 1 when some shard could not be read to its end."""
    from tqdm import tqdm

    jobs, outputs, index, count = _plan(inputs, output, shard_index, num_shards)
    bank = ConceptBank.from_spec(concept_bank)  # FileNotFoundError for a missing bank file
    _check_output_directory(output)
    workers = max(1, min(workers or len(os.sched_getaffinity(0)), len(jobs) or 1))
    can_fork = "fork" in multiprocessing.get_all_start_methods()
    # Loading the model here reports a missing one before any work; forked workers then share it.
    extractor = ConceptExtractor(spacy_model, bank=bank)

    start = time.perf_counter()
    processed: List[ShardStats] = []
    failed: List[str] = []
    progress = tqdm(total=len(jobs), unit="shard", desc="preprocess", dynamic_ncols=True)
    pool = None
    if workers == 1:
        _init_worker(extractor, spacy_model, bank, batch_size)
        outcomes = map(_process_job, jobs)
    else:
        context = multiprocessing.get_context("fork" if can_fork else "spawn")
        pool = context.Pool(workers, initializer=_init_worker,
                            initargs=(extractor if can_fork else None, spacy_model, bank, batch_size, True))
        outcomes = pool.imap_unordered(_process_job, jobs)
    try:
        for shard_stats, error in outcomes:
            if error is not None:
                failed.append(error)
            else:
                processed.append(shard_stats)
            captions = sum(shard.captions for shard in processed)
            progress.set_postfix(captions=captions, per_s=f"{captions / (time.perf_counter() - start):.0f}")
            progress.update(1)
    finally:
        progress.close()
        if pool is not None:
            pool.terminate()
    seconds = time.perf_counter() - start

    finished = [stats for stats in map(_load_shard_stats, outputs) if stats is not None]
    summary = _summarize(finished)
    run_captions = sum(shard.captions for shard in processed)
    summary.update({
        "version": CONCEPTS_JSON_VERSION,
        "this_run": {
            "seconds": round(seconds, 3),
            "captions": run_captions,
            "captions_per_second": round(run_captions / seconds, 1) if seconds > 0 else 0.0,
            "workers": workers,
            "shards_processed": len(processed),
            "shards_skipped": len(outputs) - len(jobs),
            "shards_failed": failed,
        },
        "input": list(inputs),
        "output": output,
        "spacy_model": spacy_model,
        "concept_bank": bank.source,
        "provenance": extractor.provenance,
        "concept_bank_size": None if bank.is_open else len(bank),
        "shard_index": index,
        "num_shards": count,
    })
    name = "preprocess_stats.json" if count == 1 else f"preprocess_stats.{index:05d}-of-{count:05d}.json"
    write_json(os.path.join(output, name), summary, ensure_ascii=False, indent=1)
    _print_summary(summary)
    return 1 if failed else 0
