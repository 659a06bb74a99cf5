# Shell helpers shared by the scripts in scripts/ (sourced, not run).

die() { echo "error: $*" >&2; exit 2; }

# The arguments every script takes: --dry-run (or DRY_RUN=1) prints instead of running; the others go, in EXTRA,
# to the Python command. RANK0 is 1 on the first task of an srun job only, so that notes print once per job.
parse_script_args() {
    DRY_RUN="${DRY_RUN:-0}"
    EXTRA=()
    local arg
    for arg in "$@"; do
        if [[ "$arg" == "--dry-run" ]]; then DRY_RUN=1; else EXTRA+=("$arg"); fi
    done
    RANK0=$([[ "${SLURM_PROCID:-0}" == 0 ]] && echo 1 || echo 0)
}

# A command as one line a shell can re-read: words with special characters in single quotes.
print_cmd() {
    local out="" word
    for word in "$@"; do
        if [[ "$word" =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then out+="$word "
        else out+="'${word//\'/\'\\\'\'}' "; fi
    done
    echo "${out% }"
}

# Sets PYTHON, unless it is set already, to the repository's .venv/bin/python when present, else python3.
default_python() {
    if [[ -n "${PYTHON:-}" ]]; then :
    elif [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"
    else PYTHON=python3; fi
}

# GPUs that nvidia-smi lists on this node; fails (prints nothing) when it lists none or is not installed.
count_gpus() {
    local n
    command -v nvidia-smi >/dev/null 2>&1 && n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU') && (( n > 0 )) \
        && echo "$n"
}

# Sets CMD to a torchrun command that starts NPROC processes per node running `python -m MODULE ARGS...`:
#   torchrun_module NPROC NNODES MODULE ARGS...
# torchrun is TORCHRUN (a command line) if set, else the one next to PYTHON, else the one on PATH, else
# `PYTHON -m torch.distributed.run`. One node: --standalone; more: NODE_RANK, MASTER_ADDR, MASTER_PORT (29500).
# torchrun (torch 2.14) needs "--" before the module: without it, it takes the module's --logs (training.main)
# for its own --logs-specs.
torchrun_module() {
    local nproc="$1" nnodes="$2" module="$3"
    shift 3
    if [[ -n "${TORCHRUN:-}" ]]; then read -r -a CMD <<< "$TORCHRUN"
    elif [[ -x "$(dirname "$PYTHON")/torchrun" ]]; then CMD=("$(dirname "$PYTHON")/torchrun")
    elif command -v torchrun >/dev/null 2>&1; then CMD=(torchrun)
    else CMD=("$PYTHON" -m torch.distributed.run); fi
    CMD+=(--nproc_per_node "$nproc")
    if (( nnodes > 1 )); then
        CMD+=(--nnodes "$nnodes" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR"
              --master_port "${MASTER_PORT:-29500}")
    else
        CMD+=(--standalone)
    fi
    CMD+=(-m -- "$module" "$@")
}
