#!/usr/bin/env bash
# LiT baseline on COCO Captions: scripts/train_coco.sh's recipe with --lambda-concept 0 (no concept loss, no
# concepts read), i.e. the "LiT" rows of the paper's tables trained under exactly the same conditions.
#
# Usage:
#   scripts/train_lit.sh [--dry-run] [extra training.main flags ...]
#   DRY_RUN=1 scripts/train_lit.sh            # print the command, run nothing
#   sbatch scripts/slurm/lumi.sbatch           with TRAIN_SCRIPT=scripts/train_lit.sh
# Every variable of scripts/train_coco.sh applies (MODEL, DATA, NUM_GPUS, GLOBAL_BATCH, LR_BASE, ...), except
# LAMBDA_CONCEPT, which is 0 here.
set -euo pipefail
LAMBDA_CONCEPT=0 exec bash "$(dirname "${BASH_SOURCE[0]}")/train_coco.sh" "$@"
