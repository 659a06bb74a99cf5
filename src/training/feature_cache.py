"""Frozen-feature cache: the vision tower never changes, so its outputs are computed once per image.

The tower's forward is the most expensive part of a step (69 % in the paper's profile). With the cache, a
training step reads the global token and the patch tokens from memory-mapped ``.npy`` files instead of
decoding, augmenting and encoding images.

* Compact: float16 (default) or float32 files, one set per WebDataset shard: ``<shard>.global.npy`` [n, d],
  ``<shard>.dense.npy`` [n, h*w, d], ``<shard>.keys.json`` (sample key -> row). Identical images (the several
  captions of one photo are several samples in img2dataset shards) are encoded and stored once.
* Memory-mapped and shared by all ranks and loader workers (read-only ``np.load(mmap_mode="r")``).
* Keyed: the cache folder's name is ``weights.identity.tower_fingerprint`` (the tower's architecture and
  weights, the DVT denoiser's too, the image size, the whole preprocessing and the storage dtype), so a
  different tower, resolution or preprocessing can never be read by mistake.
* Built in parallel: rank r encodes shards r, r + world_size, ...; finished files are renamed into place, so
  an interrupted build resumes where it stopped.

Images must be preprocessed deterministically (the validation transform): caching is refused when random
image augmentation is on.
"""
import hashlib
import io
import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Dict, List, Tuple

import fsspec
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from open_clip_simzss.images import IMAGE_EXTENSIONS
from open_clip_simzss.weights.identity import tower_fingerprint

DTYPES = {"float16": np.float16, "float32": np.float32}


def shard_stem(url: str) -> str:
    """A file-name-safe, unique stem for a shard URL."""
    name = Path(url).name.removesuffix(".tar")
    return f"{name}-{hashlib.sha1(url.encode()).hexdigest()[:8]}"


class FeatureCache:
    def __init__(self, root, fingerprint: str, dtype: str = "float16"):
        if dtype not in DTYPES:
            raise ValueError(f"cache dtype must be one of {sorted(DTYPES)}")
        self.dir = Path(root) / fingerprint
        self.dtype = dtype
        self._open: Dict[str, Tuple[np.ndarray, np.ndarray, Dict[str, int]]] = {}

    @classmethod
    def for_model(cls, root, model, preprocess_cfg: dict, dtype: str = "float16") -> "FeatureCache":
        return cls(root, tower_fingerprint(model, preprocess_cfg, dtype), dtype)

    def paths(self, url: str) -> Dict[str, Path]:
        stem = shard_stem(url)
        return {part: self.dir / f"{stem}.{part}" for part in ("global.npy", "dense.npy", "keys.json")}

    def has(self, url: str) -> bool:
        return all(p.exists() for p in self.paths(url).values())

    # --- building ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def build(self, urls: List[str], model, preprocess, device="cpu", batch_size: int = 64, rank: int = 0,
              world_size: int = 1) -> int:
        """Encode this rank's share of the shards that are not cached yet. Returns the number of distinct images
        encoded."""
        self.dir.mkdir(parents=True, exist_ok=True)
        todo = [u for u in urls[rank::world_size] if not self.has(u)]
        encoded = 0
        for url in tqdm(todo, desc=f"caching vision features (rank {rank})", disable=not todo):
            encoded += self._build_shard(url, model, preprocess, device, batch_size)
        return encoded

    def _build_shard(self, url, model, preprocess, device, batch_size) -> int:
        rows: Dict[str, int] = {}      # sample key -> row
        row_of_bytes: Dict[str, int] = {}  # identical images (several captions of one photo) share a row
        images, skipped = [], 0
        with fsspec.open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            members: Dict[str, bytes] = {}
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                if ext.lower() in IMAGE_EXTENSIONS and key not in members:
                    members[key] = tar.extractfile(member).read()
        for key, data in members.items():
            digest = hashlib.sha1(data).hexdigest()
            if digest not in row_of_bytes:
                try:
                    with Image.open(io.BytesIO(data)) as img:
                        images.append(preprocess(img.convert("RGB")))
                except Exception:  # a corrupt image has no row: the loader skips and counts that sample
                    skipped += 1
                    continue
                row_of_bytes[digest] = len(images) - 1
            rows[key] = row_of_bytes[digest]
        if skipped:
            logging.warning(f"{url}: {skipped} images do not decode and are not cached")
        dtype = DTYPES[self.dtype]
        n, dim = len(images), model.visual.width
        tokens = (images[0].shape[-2] // model.visual.patch_size) * (images[0].shape[-1] // model.visual.patch_size) \
            if images else 0
        paths = self.paths(url)
        tmp = {k: p.with_name(p.name + f".tmp{os.getpid()}") for k, p in paths.items()}
        global_out = np.lib.format.open_memmap(tmp["global.npy"], mode="w+", dtype=dtype, shape=(n, dim))
        dense_out = np.lib.format.open_memmap(tmp["dense.npy"], mode="w+", dtype=dtype, shape=(n, tokens, dim))
        for start in range(0, n, batch_size):
            batch = torch.stack(images[start:start + batch_size]).to(device)
            global_token, dense = model.visual.forward_tokens(batch)
            global_out[start:start + len(batch)] = global_token.float().cpu().numpy().astype(dtype)
            dense_out[start:start + len(batch)] = dense.flatten(1, 2).float().cpu().numpy().astype(dtype)
        global_out.flush()
        dense_out.flush()
        del global_out, dense_out
        tmp["keys.json"].write_text(json.dumps(rows))
        for part in ("global.npy", "dense.npy", "keys.json"):  # keys last: its presence marks completion
            os.replace(tmp[part], paths[part])
        return n

    # --- reading ----------------------------------------------------------------------------------------------
    def lookup(self, url: str, key: str):
        """(global [d], dense [h*w, d]) float32 tensors of one sample, or None if its image was not cached."""
        if url not in self._open:
            paths = self.paths(url)
            if not self.has(url):
                raise FileNotFoundError(f"no cached features for shard {url} in {self.dir}")
            rows = json.loads(paths["keys.json"].read_text())
            self._open[url] = (np.load(paths["global.npy"], mmap_mode="r"),
                               np.load(paths["dense.npy"], mmap_mode="r"), rows)
        global_arr, dense_arr, rows = self._open[url]
        row = rows.get(key)
        if row is None:
            return None
        return (torch.from_numpy(np.array(global_arr[row], dtype=np.float32)),
                torch.from_numpy(np.array(dense_arr[row], dtype=np.float32)))
