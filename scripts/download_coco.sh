#!/usr/bin/env bash
# COCO Captions (2017) as img2dataset WebDataset shards, then SimZSS concept annotations (README "Concepts in captions", docs/reproduce.md).
#
# Usage:
#   scripts/download_coco.sh [--dry-run]
#   OUT=/scratch/me/coco PROCESSES=16 THREADS=64 scripts/download_coco.sh
#   DRY_RUN=1 scripts/download_coco.sh          # print every command, download nothing
#
# Needs the internet and img2dataset (`pip install img2dataset`, best in its own venv: it pulls opencv,
# albumentations and wandb; point IMG2DATASET at its executable). Steps, each skipped when its output exists:
#   1. annotations_trainval2017.zip from cocodataset.org -> $OUT/annotations/captions_{train,val}2017.json
#   2. one (url, caption) row per caption (train2017: 591,753 rows for 118,287 images), rows shuffled with a
#      fixed seed so that the 5 captions of an image do not sit next to each other in the shards (they would
#      be false negatives in the same batch) -> $OUT/metadata/<split>.jsonl (stdlib Python only)
#   3. img2dataset: output_format webdataset, keep_ratio resize of the short side to IMAGE_SIZE (256; only
#      if bigger), 2,000 samples per shard (train2017: 296 shards, 00000..00295) -> $OUT/raw/<split>/
#      Each sample: jpg, txt (the caption), json (url, caption, image_id, caption_id, sizes, ...).
#   4. python -m open_clip_simzss preprocess: spaCy concepts of every caption -> $OUT/concepts/ (train only):
#      the same shards plus <key>.concepts.json, which training reads instead of running spaCy.
# Then: DATA=$OUT/concepts scripts/train_coco.sh   (and scripts/train_lit.sh for the LiT baseline)
#
# Variables: OUT=data/coco  SPLITS="train2017" (add val2017 for --val-data shards)  IMAGE_SIZE=256
#   RESIZE_MODE=keep_ratio  PER_SHARD=2000  PROCESSES=8  THREADS=64  SEED=0  IMG2DATASET=img2dataset
#   PYTHON (runs the preprocessing; default .venv/bin/python, else python3)  PREPROCESS_WORKERS=<all CPUs>
#   SPACY_MODEL=en_core_web_sm  CONCEPT_BANK=default  ANNOTATIONS_URL=<cocodataset.org zip>
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN="${DRY_RUN:-0}"
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument $arg (configure with environment variables, see the header)" >&2; exit 2 ;;
    esac
done

OUT="${OUT:-data/coco}"
SPLITS="${SPLITS:-train2017}"
IMAGE_SIZE="${IMAGE_SIZE:-256}"
RESIZE_MODE="${RESIZE_MODE:-keep_ratio}"
PER_SHARD="${PER_SHARD:-2000}"
PROCESSES="${PROCESSES:-8}"
THREADS="${THREADS:-64}"
SEED="${SEED:-0}"
IMG2DATASET="${IMG2DATASET:-img2dataset}"
ANNOTATIONS_URL="${ANNOTATIONS_URL:-http://images.cocodataset.org/annotations/annotations_trainval2017.zip}"
SPACY_MODEL="${SPACY_MODEL:-en_core_web_sm}"
CONCEPT_BANK="${CONCEPT_BANK:-default}"
source "$REPO/scripts/lib/common.sh"  # die, print_cmd, default_python
default_python
run() {  # print the command; run it unless this is a dry run
    print_cmd "$@"
    if [[ "$DRY_RUN" != 1 ]]; then "$@"; fi
}

for split in $SPLITS; do
    [[ "$split" == train2017 || "$split" == val2017 ]] || die "SPLITS: $split is not train2017 or val2017"
done
if [[ "$DRY_RUN" != 1 ]]; then
    command -v "$IMG2DATASET" >/dev/null 2>&1 || die "$IMG2DATASET not found: pip install img2dataset (or set IMG2DATASET)"
fi

# ---- 1. caption annotations ------------------------------------------------------------------------------
ANN_DIR="$OUT/annotations"
ZIP="$OUT/annotations_trainval2017.zip"
run mkdir -p "$ANN_DIR" "$OUT/metadata" "$OUT/raw"
need_zip=0
for split in $SPLITS; do [[ -f "$ANN_DIR/captions_$split.json" ]] || need_zip=1; done
if [[ "$need_zip" == 1 ]]; then
    if [[ "$DRY_RUN" != 1 ]]; then
        command -v curl >/dev/null 2>&1 || command -v wget >/dev/null 2>&1 || die "need curl or wget"
        command -v unzip >/dev/null 2>&1 || die "need unzip"
    fi
    if [[ -f "$ZIP" ]] && unzip -tq "$ZIP" >/dev/null 2>&1; then
        echo "# $ZIP is complete"
    elif command -v curl >/dev/null 2>&1 || [[ "$DRY_RUN" == 1 ]]; then
        run curl -fL --retry 5 -C - -o "$ZIP" "$ANNOTATIONS_URL"
    else
        run wget -c -O "$ZIP" "$ANNOTATIONS_URL"
    fi
    members=()
    for split in $SPLITS; do members+=("annotations/captions_$split.json"); done
    run unzip -o -j "$ZIP" "${members[@]}" -d "$ANN_DIR"
fi

# ---- 2. (url, caption) rows ------------------------------------------------------------------------------
build_rows() {  # captions_<split>.json -> shuffled jsonl of url, caption, image_id, caption_id
    "$PYTHON" - "$1" "$2" "$SEED" <<'PY'
import json, random, sys
src, dst, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(src, encoding="utf-8") as f:
    coco = json.load(f)
urls = {im["id"]: im["coco_url"] for im in coco["images"]}
rows = [{"url": urls[a["image_id"]], "caption": " ".join(a["caption"].split()),
         "image_id": a["image_id"], "caption_id": a["id"]} for a in coco["annotations"]]
rows.sort(key=lambda r: r["caption_id"])
random.Random(seed).shuffle(rows)
with open(dst + ".tmp", "w", encoding="utf-8") as f:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
import os
os.replace(dst + ".tmp", dst)
print(f"{dst}: {len(rows)} captions of {len(urls)} images", file=sys.stderr)
PY
}
for split in $SPLITS; do
    rows="$OUT/metadata/$split.jsonl"
    if [[ ! -f "$rows" ]]; then
        echo "# build $rows: one row per caption of $ANN_DIR/captions_$split.json, shuffled (seed $SEED)"
        if [[ "$DRY_RUN" != 1 ]]; then build_rows "$ANN_DIR/captions_$split.json" "$rows"; fi
    fi
done

# ---- 3. img2dataset --------------------------------------------------------------------------------------
for split in $SPLITS; do
    run "$IMG2DATASET" --url_list "$OUT/metadata/$split.jsonl" --input_format jsonl \
        --url_col url --caption_col caption --save_additional_columns '["image_id","caption_id"]' \
        --output_format webdataset --output_folder "$OUT/raw/$split" \
        --image_size "$IMAGE_SIZE" --resize_mode "$RESIZE_MODE" --resize_only_if_bigger True \
        --encode_format jpg --encode_quality 95 --number_sample_per_shard "$PER_SHARD" \
        --processes_count "$PROCESSES" --thread_count "$THREADS" --timeout 20 --retries 3 \
        --incremental_mode incremental --enable_wandb False
done

# ---- 4. concepts (training shards only) ------------------------------------------------------------------
if [[ " $SPLITS " == *" train2017 "* ]]; then
    PRE=("$PYTHON" -m open_clip_simzss preprocess --input "$OUT/raw/train2017/*.tar" --output "$OUT/concepts"
         --spacy-model "$SPACY_MODEL" --concept-bank "$CONCEPT_BANK")
    if [[ -n "${PREPROCESS_WORKERS:-}" ]]; then PRE+=(--workers "$PREPROCESS_WORKERS"); fi
    run "${PRE[@]}"
    echo "# train with: DATA=$OUT/concepts scripts/train_coco.sh   (LiT: scripts/train_lit.sh)"
fi
if [[ " $SPLITS " == *" val2017 "* ]]; then
    last=$(printf '%05d' $(( (25014 + PER_SHARD - 1) / PER_SHARD - 1 )))
    echo "# validation: --val-data '$OUT/raw/val2017/{00000..$last}.tar' --val-num-samples 25014"
fi
