"""Synthetic scenes: deterministic per seed, masks that match the captions, readable shards and splits."""
import json
import tarfile

import numpy as np
from PIL import Image

from open_clip_simzss.workflows import synthetic
from open_clip_simzss.workflows.synthetic import BACKGROUNDS, CATEGORIES, OBJECTS, make_scene


def test_scene_is_deterministic_per_seed():
    a, b, c = make_scene(3, seed=5), make_scene(3, seed=5), make_scene(3, seed=6)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2] and a[3] == b[3]
    assert not np.array_equal(a[0], c[0])


def test_masks_match_captions():
    for index in range(40):
        image, labels, captions, meta = make_scene(index, seed=0)
        assert image.shape == (112, 112, 3) and labels.shape == (112, 112)
        present = {CATEGORIES[i].name for i in np.unique(labels)}
        assert present == {meta["background"], *meta["objects"]}
        assert 1 <= len(meta["objects"]) <= 3
        # the background fills the image: it is the largest region
        counts = np.bincount(labels.ravel(), minlength=len(CATEGORIES))
        assert CATEGORIES[counts.argmax()].name == meta["background"] or counts.max() < 0.6 * labels.size
        for caption in captions:
            for obj, count in zip(meta["objects"], meta["counts"]):
                category = next(c for c in OBJECTS if c.name == obj)
                assert (category.plural if count > 1 else category.name) in caption.lower(), (caption, obj)


def test_categories_are_distinct_nouns():
    names = [c.name for c in CATEGORIES]
    assert len(set(names)) == len(names) == len(BACKGROUNDS) + len(OBJECTS)
    assert synthetic.concept_bank_lines() == names


def test_shards_and_eval_split(tmp_path):
    info = synthetic.write_train_shards(tmp_path / "train", 10, seed=1, captions_per_image=2, images_per_shard=4)
    assert info["num_samples"] == 20 and info["num_shards"] == 3
    with tarfile.open(tmp_path / "train" / "00000.tar") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("000000000.json").read())
    assert {"000000000.jpg", "000000000.txt", "000000000.json"} <= set(names)
    assert meta["image"] == 0 and meta["caption"]
    root = synthetic.write_eval_split(tmp_path / "eval", 3, seed=2)
    label = np.array(Image.open(root / "annotations" / "validation" / "scene_00000.png"))
    assert np.array_equal(label, make_scene(0, seed=2)[1])
    assert (root / "classnames.txt").read_text().split("\n")[:2] == [c.name for c in CATEGORIES[:2]]
