"""Training data: img2dataset WebDataset shards (``jpg``, ``txt``, optional ``concepts.json``) to SimZSS batches.

The pipeline is OpenCLIP's (``open_clip_train.data``: shard resampling, deterministic shard shuffle, split by
node and worker, ``with_epoch`` rounding) with two SimZSS additions:

* every sample carries its caption's concepts: read from ``concepts.json`` (written by ``simzss-preprocess``)
  or extracted on the fly with spaCy in the loader workers; the
  two give the same result because both come from ``ConceptExtractor.annotate``;
* the sample shuffle is seeded (``--seed``, rank, worker, epoch), so a run is reproducible;
* a batch is ``(images, texts, concepts, counts)`` where ``concepts`` holds what ``SimZSS.forward`` takes
  besides images and texts: the flat tensors ``concept_ids [M]``, ``concept_image_index [M]``,
  ``concept_token_mask [M, L]``, and ``batch_sizes`` (``open_clip_simzss.batch.BatchSizes``, read here on the
  CPU so that the
  training step needs no host-device sync, docs/performance.md).

Corrupt samples (undecodable image or caption, missing field) are skipped and counted, never crash a run;
each batch carries its worker's running count so the trainer can log the exact total, and the warnings of each
cause are printed a few times, then only counted. Data that can never give a batch stops the run in one line
(``NoTrainingDataError``) instead of looping: a whole pass over a worker's shards without a batch (corrupt or
missing shards, fewer samples than the batch), or a worker's first ``--max-consecutive-skips`` samples all
skipped. A sample whose
``concepts.json`` is malformed keeps its image and caption but no concepts (counted too), so SimZSS and LiT
runs see the same samples in the same order; a single row whose positions lie past the caption's end-of-text
token, or whose id is negative or outside the bank, is dropped and counted the same way. Whether the stored
concepts were made with the training run's bank and spaCy model is checked before training
(``training.main``, README "Training").
"""
import io
import json
import logging
import math
import tarfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from PIL import Image

from open_clip_simzss.batch import BatchSizes
from open_clip_simzss.concepts.shards import split_member_name
from open_clip_simzss.extras import require_train_extra
from open_clip_simzss.images import IMAGE_EXTENSIONS

require_train_extra("training", ("webdataset",))  # one clear line instead of an ImportError

import webdataset as wds  # noqa: E402
from open_clip_train.data import (  # noqa: E402
    _SAMPLE_SHUFFLE_INITIAL, _SAMPLE_SHUFFLE_SIZE, _SHARD_SHUFFLE_INITIAL, _SHARD_SHUFFLE_SIZE,
    DataInfo, ResampledShards2, SharedEpoch, detshuffle2, expand_urls, get_dataset_size, tarfile_to_samples_nothrow,
)

CONCEPTS_KEY = "concepts.json"


WARNINGS_PER_CAUSE = 5  # then a cause is only counted (the trainer logs the totals after each epoch)
MAX_CONCEPT_ID = 2 ** 63 - 1  # concept ids are int64 tensors


class NoTrainingDataError(ValueError):
    """Training data that cannot give a batch (every sample corrupt, fewer samples than ``--batch-size``).

    Raised in a loader worker, it reaches the trainer with the worker's traceback in its message; the
    constructor keeps the one line that says what is wrong."""

    def __init__(self, message: str):
        last = message.strip().splitlines()[-1] if message.strip() else message
        super().__init__(last.split(f"{type(self).__name__}: ", 1)[-1])


@dataclass
class SampleCounter:
    """Per-worker counts of what the pipeline had to skip or repair; the warnings of each cause are logged
    ``WARNINGS_PER_CAUSE`` times, then only counted."""
    skipped: int = 0
    bad_concepts: int = 0
    decoded: int = 0
    consecutive_skips: int = 0
    reasons: Dict[str, int] = field(default_factory=dict)
    warnings: Dict[str, int] = field(default_factory=dict)

    def warn(self, cause: str, message: str):
        count = self.warnings[cause] = self.warnings.get(cause, 0) + 1
        if count <= WARNINGS_PER_CAUSE:
            more = "; further ones are only counted" if count == WARNINGS_PER_CAUSE else ""
            logging.warning(message + more)

    def skip(self, reason: str, key: str):
        self.skipped += 1
        self.consecutive_skips += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.warn(reason, f"skipped sample {key!r}: {reason} ({self.skipped} skipped so far in this worker)")


def concepts_to_rows(annotation: dict, eot_position: int,
                     num_ids: Optional[int] = None) -> Tuple[List[tuple], int]:
    """(id, positions) rows of the concepts of a ``concepts.json`` dict, and how many rows were dropped.

    A row is dropped when it has no positions, a position outside the caption's tokens (0 is the start token,
    ``eot_position`` the caption's end-of-text token), an id that is not an integer, is negative, does not fit
    in 64 bits, or is >= ``num_ids`` (the bank's range; None for the open bank). A missing field or positions
    that are not integers raise ValueError, KeyError or TypeError (the whole record is bad).
    """
    rows, dropped = [], 0
    for concept in annotation["concepts"]:
        cid, positions = concept["id"], [int(p) for p in concept["positions"]]
        if (not positions or min(positions) < 1 or max(positions) >= eot_position
                or isinstance(cid, bool) or not isinstance(cid, int) or not 0 <= cid <= MAX_CONCEPT_ID
                or (num_ids is not None and cid >= num_ids)):
            dropped += 1
            continue
        rows.append((cid, positions))
    return rows, dropped


def collate_concepts(rows_per_sample: List[List[tuple]], context_length: int) -> Dict[str, torch.Tensor]:
    """Flat concept tensors of a batch from each sample's (id, positions) rows."""
    ids, image_index, positions = [], [], []
    for i, rows in enumerate(rows_per_sample):
        for cid, pos in rows:
            ids.append(cid)
            image_index.append(i)
            positions.append(pos)
    mask = torch.zeros(len(ids), context_length, dtype=torch.bool)
    for m, pos in enumerate(positions):
        mask[m, pos] = True
    return {
        "concept_ids": torch.tensor(ids, dtype=torch.long),
        "concept_image_index": torch.tensor(image_index, dtype=torch.long),
        "concept_token_mask": mask,
    }


def first_concepts_record(url: str) -> Optional[dict]:
    """The ``concepts.json`` of the first sample of the shard at ``url`` (a path or WebDataset URL such as
    ``pipe:...``), or None when that sample has none. Reads the tar as a stream up to the second sample only.
    Raises OSError / tarfile.TarError for an unreadable shard and ValueError for a record that is not JSON."""
    first_key = None
    with wds.gopen(url, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as archive:
        for member in archive:
            if not member.isfile():
                continue
            key, extension = split_member_name(member.name)
            if first_key is None:
                first_key = key
            elif key != first_key:
                return None
            if extension == CONCEPTS_KEY:
                return json.loads(archive.extractfile(member).read())
    return None


class SampleDecoder:
    """Raw WebDataset sample -> (image tensor, token ids, concept rows); counts what it skips."""

    def __init__(self, preprocess_img: Callable, tokenizer, with_concepts: bool, extractor_factory=None,
                 force_on_the_fly: bool = False, feature_cache=None, num_concept_ids: Optional[int] = None,
                 max_consecutive_skips: int = 0):
        self.preprocess_img = preprocess_img
        self.max_consecutive_skips = max_consecutive_skips  # 0: no limit
        self.num_concept_ids = num_concept_ids
        self.feature_cache = feature_cache
        self.tokenizer = tokenizer
        self.with_concepts = with_concepts
        self.extractor_factory = extractor_factory
        self.force_on_the_fly = force_on_the_fly
        self._extractor = None
        self.counter = SampleCounter()

    @property
    def extractor(self):
        if self._extractor is None:  # loaded lazily, once per loader worker
            self._extractor = self.extractor_factory()
        return self._extractor

    def concept_rows(self, sample: dict, caption: str, tokens: torch.Tensor) -> List[tuple]:
        if not self.with_concepts:
            return []
        key = sample.get("__key__", "?")
        # OpenCLIP's convention (its argmax text pooling): <end_of_text> has the largest token id.
        eot_position = int(tokens.argmax())
        if CONCEPTS_KEY in sample and not self.force_on_the_fly:
            try:
                annotation = json.loads(sample[CONCEPTS_KEY])
                rows, dropped = concepts_to_rows(annotation, eot_position, self.num_concept_ids)
            except (ValueError, KeyError, TypeError) as e:
                self.counter.bad_concepts += 1
                self.counter.warn("malformed", f"sample {key!r}: malformed {CONCEPTS_KEY} ({e}); training it "
                                  "without concepts")
                return []
            if dropped:
                self.counter.bad_concepts += dropped
                self.counter.warn("dropped rows", f"sample {key!r}: {dropped} {CONCEPTS_KEY} rows dropped (a "
                                  "position past the caption's end-of-text token, or an id outside the concept bank)")
            return rows
        if self.extractor_factory is None:
            return []
        return concepts_to_rows(self.extractor.annotate(caption), eot_position)[0]

    def __call__(self, source):
        for sample in source:
            self.check_not_all_corrupt()
            key = sample.get("__key__", "?")
            image_key = next((k for k in IMAGE_EXTENSIONS if k in sample), None)
            if image_key is None or "txt" not in sample:
                self.counter.skip("no image or no caption", key)
                continue
            try:
                caption = sample["txt"].decode("utf-8")
            except UnicodeDecodeError:
                self.counter.skip("caption is not UTF-8", key)
                continue
            if self.feature_cache is not None:
                image = self.feature_cache.lookup(sample["__url__"], key)  # (global, dense) of the frozen tower
                if image is None:
                    self.counter.skip("image did not decode when the feature cache was built", key)
                    continue
            else:
                try:
                    with Image.open(io.BytesIO(sample[image_key])) as img:
                        image = self.preprocess_img(img.convert("RGB"))
                except Exception as e:  # PIL raises many types for broken files
                    self.counter.skip(f"image does not decode ({type(e).__name__})", key)
                    continue
            tokens = self.tokenizer([caption])[0]
            self.counter.decoded += 1
            self.counter.consecutive_skips = 0
            yield image, tokens, self.concept_rows(sample, caption, tokens)
        self.check_not_all_corrupt()

    def check_not_all_corrupt(self):
        """Fail fast when this worker's first ``max_consecutive_skips`` samples were all skipped (a later run
        of corrupt samples is only skipped and counted)."""
        counter = self.counter
        if self.max_consecutive_skips and not counter.decoded and counter.consecutive_skips >= \
                self.max_consecutive_skips:
            reasons = ", ".join(f"{reason} ({n})" for reason, n in counter.reasons.items())
            raise NoTrainingDataError(f"the first {counter.consecutive_skips} training samples read by a loader "
                                      f"worker were all unusable: {reasons}; check --train-data (the limit is "
                                      "--max-consecutive-skips)")


class Batcher:
    """Groups decoded samples into (images, texts, concepts, counts) batches; ``counts`` is (worker, skipped,
    bad concepts) as Python ints, like ``concepts["batch_sizes"]``: the trainer reads them without a sync."""

    def __init__(self, batch_size: int, context_length: int, decoder: SampleDecoder, partial: bool):
        self.batch_size, self.context_length, self.decoder, self.partial = batch_size, context_length, decoder, partial

    def _chunks(self, source):
        chunk = []
        for sample in source:
            chunk.append(sample)
            if len(chunk) == self.batch_size:
                yield chunk
                chunk = []
        if chunk and self.partial:
            yield chunk

    def __call__(self, source):
        # Called once per pass over this worker's shards (WebDataset repeats the pipeline until the epoch has
        # its batches): a pass without a batch would repeat forever.
        batches = 0
        for chunk in self._chunks(source):
            batches += 1
            if isinstance(chunk[0][0], tuple):  # cached tower outputs instead of images
                images = {"image_features": torch.stack([s[0][0] for s in chunk]),
                          "patch_tokens": torch.stack([s[0][1] for s in chunk])}
            else:
                images = torch.stack([s[0] for s in chunk])
            texts = torch.stack([s[1] for s in chunk])
            concepts = collate_concepts([s[2] for s in chunk], self.context_length)
            concepts["batch_sizes"] = BatchSizes.of(texts, **concepts)
            info = torch.utils.data.get_worker_info()
            worker = info.id if info is not None else 0
            counts = (worker, self.decoder.counter.skipped, self.decoder.counter.bad_concepts)
            yield images, texts, concepts, counts
        if not batches:
            counter = self.decoder.counter
            raise NoTrainingDataError(
                f"a whole pass over a loader worker's training shards gave no batch: {counter.decoded} usable "
                f"samples for --batch-size {self.batch_size}, {counter.skipped} skipped; check --train-data "
                "(missing or corrupt shards?) or lower --batch-size or --workers")


def get_wds_dataset(args, preprocess_img, is_train: bool, epoch: int = 0, floor: bool = False, tokenizer=None,
                    with_concepts: bool = True, extractor_factory=None, force_on_the_fly: bool = False,
                    feature_cache=None, num_concept_ids: Optional[int] = None) -> DataInfo:
    """OpenCLIP's WebDataset loader (same resampling, shuffling and epoch rounding) yielding SimZSS batches.

    Training batches are ``(images, texts, concepts, counts)``; evaluation batches are ``(images, texts)`` as
    OpenCLIP's ``evaluate`` expects. With a ``feature_cache`` (``training.feature_cache.FeatureCache``), ``images`` is
    the dict ``{"image_features", "patch_tokens"}`` of the frozen tower's cached outputs. ``num_concept_ids``
    is the training bank's id range (``ConceptBank.num_ids``; None for the open bank): stored rows outside it
    are dropped and counted.
    """
    input_shards = args.train_data if is_train else args.val_data
    resampled = getattr(args, "dataset_resampled", False) and is_train
    num_shards = None
    if is_train:
        if args.train_num_samples is not None:
            num_samples = args.train_num_samples
        else:
            num_samples, num_shards = get_dataset_size(input_shards)
            if not num_samples:
                raise ValueError("the number of training samples is unknown: pass --train-num-samples")
    else:
        num_samples = args.val_num_samples or 0
    shared_epoch = SharedEpoch(epoch=epoch)
    if resampled:
        pipeline = [ResampledShards2(input_shards, weights=args.train_data_upsampling_factors, deterministic=True,
                                     epoch=shared_epoch)]
    else:
        pipeline = [wds.SimpleShardList(input_shards)]
    if is_train:
        if not resampled:
            pipeline += [
                detshuffle2(bufsize=_SHARD_SHUFFLE_SIZE, initial=_SHARD_SHUFFLE_INITIAL, seed=args.seed,
                            epoch=shared_epoch),
                wds.split_by_node,
                wds.split_by_worker,
            ]
        # OpenCLIP uses wds.shuffle, seeded from the clock and pid: runs with the same --seed differ. A seed from
        # the loader worker's torch seed (itself drawn from --seed and the rank) and the epoch makes the sample
        # order reproducible while still different across workers, ranks and epochs.
        pipeline += [tarfile_to_samples_nothrow,
                     detshuffle2(bufsize=_SAMPLE_SHUFFLE_SIZE, initial=_SAMPLE_SHUFFLE_INITIAL, seed=-1,
                                 epoch=shared_epoch)]
    else:
        pipeline += [wds.split_by_worker, tarfile_to_samples_nothrow]

    decoder = SampleDecoder(preprocess_img, tokenizer, with_concepts and is_train, extractor_factory,
                            force_on_the_fly, feature_cache if is_train else None, num_concept_ids,
                            getattr(args, "max_consecutive_skips", 0) if is_train else 0)
    pipeline.append(decoder)
    if is_train:
        pipeline.append(Batcher(args.batch_size, tokenizer.context_length, decoder, partial=False))
    else:
        pipeline += [wds.map(lambda s: (s[0], s[1])), wds.batched(args.batch_size, partial=True)]
    dataset = wds.DataPipeline(*pipeline)

    if is_train:
        if not resampled:
            num_shards = num_shards or len(expand_urls(input_shards)[0])
            if num_shards < args.workers * args.world_size:
                raise ValueError(f"{num_shards} shards cannot feed {args.workers} workers x {args.world_size} "
                                 "processes: use fewer --workers or --dataset-resampled")
        round_fn = math.floor if floor else math.ceil
        global_batch_size = args.batch_size * args.world_size
        num_batches = round_fn(num_samples / global_batch_size)
        num_workers = max(1, args.workers)
        num_worker_batches = round_fn(num_batches / num_workers)
        num_batches = num_worker_batches * num_workers
        num_samples = num_batches * global_batch_size
        dataset = dataset.with_epoch(num_worker_batches)
    else:
        num_batches = math.ceil(num_samples / args.batch_size)
    dataloader = wds.WebLoader(dataset, batch_size=None, shuffle=False, num_workers=args.workers,
                               persistent_workers=args.workers > 0,
                               pin_memory=torch.device(getattr(args, "device", "cpu")).type == "cuda")
    dataloader.num_batches = num_batches
    dataloader.num_samples = num_samples
    return DataInfo(dataloader=dataloader, shared_epoch=shared_epoch)


class SkipTally:
    """Totals of the per-worker running counts that training batches carry."""

    def __init__(self):
        self.skipped: Dict[int, int] = {}
        self.bad_concepts: Dict[int, int] = {}

    def update(self, counts: torch.Tensor):
        worker, skipped, bad = (int(c) for c in counts)
        self.skipped[worker] = max(self.skipped.get(worker, 0), skipped)
        self.bad_concepts[worker] = max(self.bad_concepts.get(worker, 0), bad)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def total_bad_concepts(self) -> int:
        return sum(self.bad_concepts.values())
