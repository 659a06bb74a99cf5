"""Build COCO-Object labels from COCO-Stuff-164k (docs/evaluation.md, COCO-Object).

Reads the raw 0-indexed COCO-Stuff PNGs (``annotations/<split>/<id>.png``, the files without "TrainIds" in
their name, from stuffthingmaps_trainval2017.zip) and writes ``annotations/<split>/<id>_instanceTrainIds.png``
next to them: the 80 thing classes become 1..80, stuff (91..181) and unlabelled (255) become 0 = background,
so COCO-Object has no ignored pixels. The mapping is ``open_clip_simzss.evaluation.datasets.coco_object_lut``.

    python scripts/convert_coco_object.py data/coco_stuff164k            # val2017
    python scripts/convert_coco_object.py data/coco_stuff164k --split train2017 --workers 8
"""
import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from open_clip_simzss.evaluation.datasets import stuff_to_object

SUFFIX = "_instanceTrainIds.png"


def convert_one(args):
    src, overwrite = args
    dst = src.with_name(src.stem + SUFFIX)
    if dst.exists() and not overwrite:
        return False
    with Image.open(src) as im:
        if im.mode not in ("L", "P"):
            raise ValueError(f"{src}: mode {im.mode}, expected a single-channel 8-bit label PNG")
        label = np.asarray(im)
    Image.fromarray(stuff_to_object(label), mode="L").save(dst)
    return True


def raw_labels(ann_dir: Path):
    # The raw maps are <12 digits>.png; skip every derived file (*_labelTrainIds.png, *_instanceTrainIds.png).
    return sorted(p for p in ann_dir.glob("*.png") if "TrainIds" not in p.name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the coco_stuff164k folder (has annotations/<split>/)")
    parser.add_argument("--split", default="val2017")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    ann_dir = args.root / "annotations" / args.split
    if not ann_dir.is_dir():
        print(f"error: expected the COCO-Stuff label folder {ann_dir}", file=sys.stderr)
        return 2
    files = raw_labels(ann_dir)
    if not files:
        print(f"error: no raw COCO-Stuff label PNGs (<id>.png) in {ann_dir}", file=sys.stderr)
        return 2
    jobs = [(f, args.overwrite) for f in files]
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            written = sum(tqdm(pool.map(convert_one, jobs, chunksize=64), total=len(jobs), desc="coco_object"))
    else:
        written = sum(convert_one(j) for j in tqdm(jobs, desc="coco_object"))
    print(f"wrote {written} of {len(files)} *{SUFFIX} files in {ann_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
