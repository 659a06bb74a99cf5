#!/usr/bin/env bash
# Zero-shot segmentation of a trained checkpoint on the eight benchmarks (docs/reproduce.md, step 5), on all the
# GPUs of a node with torchrun, or as one srun task of scripts/slurm/evaluate_*.sbatch.
#
# Usage:
#   CHECKPOINT=logs/<name>/checkpoints/epoch_7.pt scripts/evaluate.sh [--dry-run] [extra evaluate flags ...]
#   CHECKPOINT=... SWEEP=0.0:0.4:0.01 scripts/evaluate.sh    # threshold selected on 500 training images
#   DRY_RUN=1 scripts/evaluate.sh                            # print the command, run nothing
#   sbatch scripts/slurm/evaluate_lumi.sbatch   (runs this script in each srun task with LAUNCHER=python)
#
# The images are split across the processes and their counts summed: the JSON is the one of a single process.
# An interrupted run resumes when rerun with the same settings (the same OUTPUT; finished image shards are kept
# in OUTPUT.partial/). Extra arguments go to simzss-evaluate after this script's flags, so they
# override them (argparse: last wins), e.g. --restart, --quiet, --shard-size N, --window-batch-size N.
#
# Environment variables:
#   CHECKPOINT                required (a training checkpoint, model folder or hub id); a dry run prints a
#                             placeholder without it
#   MODEL=simzss-vitb14       the config of a bare training checkpoint (simzss-vitb14-dvt: the DVT tower)
#   DATA_ROOT=data            MMSeg data root (README "Zero-shot segmentation evaluation")
#   DATASETS=all              a benchmark, a comma list, all, or folder:PATH (your own dataset)
#   SWEEP=                    empty: the per-dataset default background thresholds (the documented protocol);
#                             START:STOP:STEP (docs/reproduce.md: 0.0:0.4:0.01) scores that grid of thresholds
#   SWEEP_ON=train:500        with SWEEP: where the threshold is selected (train:N or val:N; empty: on the
#                             evaluated images, reported as "selected on the test split"). train:N needs the
#                             COCO-Object training labels (scripts/convert_coco_object.py --split train2017)
#   PRECISION=fp32            fp32 | amp_bf16 (bf16 autocast around the vision tower)
#   PAMR=0                    1: refine the scores with PAMR
#   WORKERS                   image-decoding threads per process (evaluate's default when unset)
#   NAME=<checkpoint>[-<datasets>][-sweep][-pamr]   (the run folder and epoch for logs/<run>/checkpoints/epoch_N.pt)
#   OUTPUT=results/$NAME.json
#   LAUNCHER=torchrun|python  torchrun: one node, NUM_GPUS processes (NNODES>1: also NODE_RANK, MASTER_ADDR,
#                             MASTER_PORT); python: one process, the caller (srun) starts one per GPU.
#   NUM_GPUS=<nvidia-smi count, else 1>   NNODES=1
#   PYTHON=.venv/bin/python if present, else python3     TORCHRUN=torchrun next to PYTHON, else on PATH
#   DRY_RUN=1 (or --dry-run)  print the command instead of running it
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

source "$REPO/scripts/lib/common.sh"  # die, parse_script_args, print_cmd, default_python, count_gpus, torchrun_module
parse_script_args "$@"
is_posint() { [[ "$1" =~ ^[0-9]+$ ]] && (( 10#$1 > 0 )); }
default_python

MODEL="${MODEL:-simzss-vitb14}"
CHECKPOINT="${CHECKPOINT:-}"
DATA_ROOT="${DATA_ROOT:-data}"
DATASETS="${DATASETS:-all}"
SWEEP="${SWEEP:-}"
PRECISION="${PRECISION:-fp32}"
PAMR="${PAMR:-0}"
WORKERS="${WORKERS:-}"
LAUNCHER="${LAUNCHER:-torchrun}"
NNODES="${NNODES:-1}"

# ---- settings --------------------------------------------------------------------------------------------
if [[ -z "$CHECKPOINT" ]]; then
    [[ "$DRY_RUN" == 1 ]] || die "CHECKPOINT is not set (the checkpoint to evaluate, e.g." \
                                 "logs/<name>/checkpoints/epoch_7.pt)"
    CHECKPOINT=CHECKPOINT  # a placeholder in the printed command
fi
number='-?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?'
if [[ -n "$SWEEP" ]]; then
    [[ "$SWEEP" =~ ^$number:$number:$number$ ]] || die "SWEEP=$SWEEP: use START:STOP:STEP, e.g. 0.0:0.4:0.01"
    SWEEP_ON="${SWEEP_ON-train:500}"
    [[ -z "$SWEEP_ON" || "$SWEEP_ON" =~ ^(train|val):0*[1-9][0-9]*$ ]] \
        || die "SWEEP_ON=$SWEEP_ON: use train:N or val:N with N >= 1 (empty: select on the evaluated images)"
elif [[ -n "${SWEEP_ON:-}" ]]; then
    die "SWEEP_ON=$SWEEP_ON needs SWEEP (the thresholds to select from, e.g. SWEEP=0.0:0.4:0.01)"
else
    SWEEP_ON=""
fi
case "$PRECISION" in fp32|amp_bf16) ;; *) die "PRECISION=$PRECISION: use fp32 or amp_bf16" ;; esac
case "$PAMR" in 0|1) ;; *) die "PAMR=$PAMR: use 0 or 1" ;; esac
if [[ -n "$WORKERS" ]]; then
    [[ "$WORKERS" =~ ^[0-9]+$ ]] || die "WORKERS=$WORKERS is not a non-negative integer"
fi
is_posint "$NNODES" || die "NNODES=$NNODES is not a positive integer"

# ---- processes -------------------------------------------------------------------------------------------
case "$LAUNCHER" in
    python)
        WORLD_SIZE="${SLURM_NTASKS:-1}"
        ;;
    torchrun)
        if [[ -z "${NUM_GPUS:-}" ]]; then
            NUM_GPUS=$(count_gpus) || NUM_GPUS=1  # no GPU listed: one process (on the CPU)
        fi
        is_posint "$NUM_GPUS" || die "NUM_GPUS=$NUM_GPUS is not a positive integer"
        if (( NNODES > 1 )); then
            [[ -n "${NODE_RANK:-}" && -n "${MASTER_ADDR:-}" ]] || die "NNODES=$NNODES needs NODE_RANK and MASTER_ADDR"
        fi
        WORLD_SIZE=$(( NNODES * NUM_GPUS ))
        ;;
    *) die "LAUNCHER=$LAUNCHER: use torchrun or python" ;;
esac

# ---- output ----------------------------------------------------------------------------------------------
# The default name depends on the settings only (no date, no job id), so a rerun resumes the interrupted one.
if [[ -z "${NAME:-}" ]]; then
    ckpt="${CHECKPOINT%/}"
    if [[ "$ckpt" =~ ([^/]+)/checkpoints/([^/]+)\.(pt|pth|safetensors)$ ]]; then
        NAME="${BASH_REMATCH[1]}-${BASH_REMATCH[2]}"
    else
        NAME="${ckpt##*[/:]}"
        NAME="${NAME%.pt}"; NAME="${NAME%.pth}"; NAME="${NAME%.safetensors}"
    fi
    if [[ "$DATASETS" != all ]]; then NAME+="-$DATASETS"; fi
    if [[ -n "$SWEEP" ]]; then NAME+="-sweep"; fi
    if [[ "$PAMR" == 1 ]]; then NAME+="-pamr"; fi
    NAME="${NAME//[^A-Za-z0-9._+-]/-}"
fi
OUTPUT="${OUTPUT:-results/$NAME.json}"

ARGS=(
    --model "$MODEL" --checkpoint "$CHECKPOINT"
    --dataset "$DATASETS" --data-root "$DATA_ROOT"
    --precision "$PRECISION"
    --output "$OUTPUT"
)
if [[ -n "$SWEEP" ]]; then ARGS+=(--background-sweep "$SWEEP"); fi
if [[ -n "$SWEEP_ON" ]]; then ARGS+=(--sweep-on "$SWEEP_ON"); fi
if [[ "$PAMR" == 1 ]]; then ARGS+=(--pamr); fi
if [[ -n "$WORKERS" ]]; then ARGS+=(--workers "$WORKERS"); fi
ARGS+=(${EXTRA[@]+"${EXTRA[@]}"})

if [[ "$LAUNCHER" == torchrun ]]; then
    torchrun_module "$NUM_GPUS" "$NNODES" open_clip_simzss evaluate "${ARGS[@]}"
else
    CMD=("$PYTHON" -u -m open_clip_simzss evaluate "${ARGS[@]}")
fi

if [[ "$DRY_RUN" == 1 || "$RANK0" == 1 ]]; then
    if [[ -z "$SWEEP" ]]; then threshold="per-dataset default background thresholds"
    elif [[ -z "$SWEEP_ON" ]]; then threshold="background threshold swept over $SWEEP, selected on the test split"
    else threshold="background threshold swept over $SWEEP, selected on $SWEEP_ON"; fi
    settings="$PRECISION"
    if [[ "$PAMR" == 1 ]]; then settings+=", PAMR"; fi
    echo "# evaluation: $MODEL ($CHECKPOINT) on $DATASETS, $WORLD_SIZE process(es), $settings; $threshold;" \
         "results in $OUTPUT" >&2
fi
if [[ "$DRY_RUN" == 1 ]]; then
    print_cmd "${CMD[@]}"
    exit 0
fi

mkdir -p "$(dirname "$OUTPUT")"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"  # open_clip_simzss importable without pip install -e
exec "${CMD[@]}"
