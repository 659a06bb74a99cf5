"""Tiny img2dataset-style WebDataset shards with real JPEGs, written by tests."""
import io
import json
import tarfile

import numpy as np
from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 40)}
NOUNS = ["dog", "cat", "bus", "horse", "car", "boat", "bird", "train"]
PLACES = ["grass", "road", "beach", "snow"]


def jpeg_bytes(color, size=48, seed=0):
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color)[None, None] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def caption_for(i):
    color = list(COLORS)[i % len(COLORS)]
    return color, f"a {color} {NOUNS[i % len(NOUNS)]} on the {PLACES[(i // 2) % len(PLACES)]}"


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder, num_shards, per_shard, annotate=None, corrupt_keys=(), start=0):
    """Shards ``{folder}/{k:05d}.tar``; ``annotate(caption) -> dict`` adds ``concepts.json``.
    Samples whose key is in ``corrupt_keys`` get bytes that are not an image. Returns the shard pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    i = start
    for shard in range(num_shards):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for _ in range(per_shard):
                key = f"{i:09d}"
                color, caption = caption_for(i)
                image = b"this is not a jpeg" if key in corrupt_keys else jpeg_bytes(COLORS[color], seed=i)
                _add(tar, f"{key}.jpg", image)
                _add(tar, f"{key}.txt", caption.encode())
                _add(tar, f"{key}.json", json.dumps({"key": key, "caption": caption}).encode())
                if annotate is not None:
                    _add(tar, f"{key}.concepts.json", json.dumps(annotate(caption)).encode())
                i += 1
    return str(folder / ("{00000..%05d}.tar" % (num_shards - 1)))
