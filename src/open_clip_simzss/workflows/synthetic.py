"""Synthetic scenes: seeded image-caption pairs with ground-truth masks, for the CPU demo and tests.

Each scene is a background category filling the image and 1-3 object categories painted as irregular blobs.
Every category has a distinctive colour and texture (jittered per instance), so a random frozen tower already
separates them and what SimZSS adds — aligning words with regions — is measurable. Captions come from varied
English templates with adjectives, plurals, compound nouns and distractor nouns that are not in the concept
bank, several captions per image, so spaCy extraction runs for real.

Written as img2dataset-style WebDataset shards (``jpg``, ``txt``, ``json``; one sample per caption, like COCO
Captions) for training, and as an MMSeg-style folder (``images/<split>/*.jpg``, ``annotations/<split>/*.png``,
``classnames.txt``) for evaluation.
"""
import io
import json
import math
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Category:
    name: str          # an ordinary English noun (phrase), as the concept bank spells it
    plural: str
    color: Tuple[int, int, int]
    texture: str       # "stripes", "dots", "checker", "waves", "grain"
    period: float      # texture period in pixels
    angle: float       # texture orientation, degrees


BACKGROUNDS = [
    Category("grass", "grass", (60, 150, 50), "grain", 3.0, 0),
    Category("sand", "sand", (215, 190, 130), "dots", 5.0, 0),
    Category("water", "water", (40, 90, 190), "waves", 9.0, 10),
    Category("snow", "snow", (235, 235, 245), "grain", 4.0, 0),
    Category("road", "road", (90, 90, 95), "stripes", 14.0, 90),
]
OBJECTS = [
    Category("dog", "dogs", (150, 95, 45), "stripes", 6.0, 30),
    Category("cat", "cats", (240, 150, 40), "stripes", 4.0, 120),
    Category("car", "cars", (200, 30, 40), "checker", 8.0, 0),
    Category("boat", "boats", (245, 245, 90), "waves", 5.0, 80),
    Category("bird", "birds", (30, 200, 210), "dots", 4.0, 0),
    Category("horse", "horses", (95, 55, 30), "grain", 2.5, 0),
    Category("teddy bear", "teddy bears", (180, 120, 200), "dots", 7.0, 0),
    Category("traffic light", "traffic lights", (20, 20, 20), "checker", 4.0, 45),
]
CATEGORIES = BACKGROUNDS + OBJECTS  # label index = position in this list

ADJECTIVES = ["small", "big", "old", "young", "happy", "lonely", "bright", "tiny", "large", "funny"]
PLACE_WORDS = {"grass": "on the grass", "sand": "on the sand", "water": "in the water", "snow": "in the snow",
               "road": "on the road"}
DISTRACTORS = ["in this photo", "in the picture", "on a sunny day", "at noon", "in this image", "from a distance"]


def texture(category: Category, size: int, rng: np.random.Generator) -> np.ndarray:
    """[size, size, 3] float image of the category's colour and texture, jittered."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = math.radians(category.angle + rng.uniform(-15, 15))
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    period = category.period * rng.uniform(0.85, 1.15)
    phase = rng.uniform(0, 2 * math.pi)
    if category.texture == "stripes":
        pattern = np.sign(np.sin(2 * math.pi * u / period + phase))
    elif category.texture == "checker":
        pattern = np.sign(np.sin(math.pi * u / period + phase) * np.sin(math.pi * v / period + phase))
    elif category.texture == "dots":
        pattern = (np.sin(2 * math.pi * u / period + phase) * np.sin(2 * math.pi * v / period) > 0.5) * 2.0 - 1
    elif category.texture == "waves":
        pattern = np.sin(2 * math.pi * (u + 3 * np.sin(2 * math.pi * v / (4 * period))) / period + phase)
    else:  # grain
        pattern = rng.normal(0, 1, (size, size))
    color = np.clip(np.array(category.color, np.float32) + rng.normal(0, 12, 3), 0, 255)
    image = color[None, None] * (1 + 0.22 * pattern[..., None]) + rng.normal(0, 6, (size, size, 3))
    return np.clip(image, 0, 255)


def blob_mask(size: int, rng: np.random.Generator, min_radius=0.17, max_radius=0.3) -> np.ndarray:
    """An irregular star-convex blob: a circle whose radius is modulated by a few random harmonics."""
    cy, cx = rng.uniform(0.25, 0.75, 2) * size
    radius = rng.uniform(min_radius, max_radius) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = np.arctan2(yy - cy, xx - cx)
    r = np.full_like(theta, radius)
    for k in range(2, 6):
        r += radius * rng.uniform(0, 0.25) / k * np.sin(k * theta + rng.uniform(0, 2 * math.pi))
    return np.hypot(yy - cy, xx - cx) <= r


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def captions_for(background: Category, objects: List[Category], counts: List[int], rng: random.Random,
                 n: int) -> List[str]:
    """``n`` distinct-ish captions mentioning every object (with count) and usually the background."""
    def mention(obj, count):
        if count > 1:
            return f"{['two', 'three'][count - 2]} {rng.choice(ADJECTIVES) + ' ' if rng.random() < 0.4 else ''}{obj.plural}"
        adj = rng.choice(ADJECTIVES) + " " if rng.random() < 0.5 else ""
        return f"{_article(adj or obj.name)} {adj}{obj.name}"

    captions = []
    for _ in range(n):
        parts = [mention(o, c) for o, c in zip(objects, counts)]
        things = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        place = PLACE_WORDS[background.name]
        distractor = rng.choice(DISTRACTORS) if rng.random() < 0.5 else ""
        template = rng.choice([
            "{things} {place} {distractor}",
            "a photo of {things} {place}",
            "there is {things} {place} {distractor}",
            "{place}, {things} {distractor}",
            "{things} {distractor}",
            "close-up picture of {things} {place}",
        ])
        text = template.format(things=things, place=place, distractor=distractor)
        captions.append(" ".join(text.split()).capitalize() + ".")
    return captions


def make_scene(index: int, seed: int, size: int = 112, captions_per_image: int = 3):
    """(RGB uint8 image [size, size, 3], label map uint8 [size, size], captions, metadata) for one scene."""
    rng = np.random.default_rng([seed, index])
    text_rng = random.Random(seed * 1_000_003 + index)
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    num_objects = int(rng.integers(1, 4))
    objects = [OBJECTS[i] for i in rng.choice(len(OBJECTS), num_objects, replace=False)]
    image = texture(background, size, rng)
    labels = np.full((size, size), CATEGORIES.index(background), np.uint8)
    counts = []
    for obj in objects:
        count = 1 if rng.random() < 0.7 else 2
        for _ in range(count):
            mask = blob_mask(size, rng, *((0.17, 0.3) if count == 1 else (0.12, 0.2)))
            image[mask] = texture(obj, size, rng)[mask]
            labels[mask] = CATEGORIES.index(obj)
        counts.append(count)
    present = [o for o in objects if (labels == CATEGORIES.index(o)).any()]  # a later blob may cover one
    counts = [c for o, c in zip(objects, counts) if o in present]
    captions = captions_for(background, present, counts, text_rng, captions_per_image)
    meta = {"background": background.name, "objects": [o.name for o in present], "counts": counts}
    return image.astype(np.uint8), labels, captions, meta


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_train_shards(folder, num_images: int, seed: int, size: int = 112, captions_per_image: int = 3,
                       images_per_shard: int = 256) -> Dict:
    """img2dataset-style shards, one sample per caption. Returns {"pattern", "num_samples", "num_shards"}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    num_shards = max(1, math.ceil(num_images / images_per_shard))
    sample = 0
    for shard in range(num_shards):
        tmp = folder / f"{shard:05d}.tar.tmp"
        with tarfile.open(tmp, "w") as tar:
            for index in range(shard * images_per_shard, min(num_images, (shard + 1) * images_per_shard)):
                image, _, captions, meta = make_scene(index, seed, size, captions_per_image)
                jpg = _jpeg(image)
                for caption in captions:
                    key = f"{sample:09d}"
                    _add(tar, f"{key}.jpg", jpg)
                    _add(tar, f"{key}.txt", caption.encode())
                    _add(tar, f"{key}.json", json.dumps(dict(meta, key=key, image=index, caption=caption)).encode())
                    sample += 1
        tmp.rename(folder / f"{shard:05d}.tar")
    return {"pattern": str(folder / ("{00000..%05d}.tar" % (num_shards - 1))), "num_samples": sample,
            "num_shards": num_shards}


def write_eval_split(root, num_images: int, seed: int, size: int = 112, split: str = "validation") -> Path:
    """MMSeg-style folder: ``images/<split>/*.jpg``, ``annotations/<split>/*.png`` (label = category index),
    ``classnames.txt`` (one category a line, in label order). Seeds must differ from the training seed."""
    root = Path(root)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    for index in range(num_images):
        image, labels, _, _ = make_scene(index, seed, size)
        Image.fromarray(image).save(root / "images" / split / f"scene_{index:05d}.jpg", quality=92)
        Image.fromarray(labels).save(root / "annotations" / split / f"scene_{index:05d}.png")
    (root / "classnames.txt").write_text("\n".join(c.name for c in CATEGORIES) + "\n")
    return root


def write_folder_dataset(root, num_images: int, seed: int, size: int = 112) -> Path:
    """A dataset in the ``--dataset folder:PATH`` layout (docs/evaluation.md, "Your own dataset"):
    ``images/*.jpg``, ``masks/*.png`` (label = category index), ``classnames.txt``, ``dataset.json`` (the
    protocol of these small scenes: the whole image is one window)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for index in range(num_images):
        image, labels, _, _ = make_scene(index, seed, size)
        Image.fromarray(image).save(root / "images" / f"scene_{index:05d}.jpg", quality=92)
        Image.fromarray(labels).save(root / "masks" / f"scene_{index:05d}.png")
    (root / "classnames.txt").write_text("\n".join(c.name for c in CATEGORIES) + "\n")
    protocol = {"short_side": size, "max_long_side": 4 * size, "window": size, "stride": size // 2}
    (root / "dataset.json").write_text(json.dumps({"name": "synthetic_scenes", "protocol": protocol}, indent=2))
    return root


def concept_bank_lines() -> List[str]:
    """The demo's concept bank: the category names."""
    return [c.name for c in CATEGORIES]
