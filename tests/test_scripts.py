"""The shell scripts: syntax, dry runs (the commands they would run), the recipe's arithmetic, and the SLURM
files' real path with ``srun``/``scontrol`` stubbed on PATH. Nothing here needs SLURM, a GPU or the internet."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["scripts/train_coco.sh", "scripts/train_lit.sh", "scripts/download_coco.sh", "scripts/evaluate.sh",
           "scripts/slurm/lumi.sbatch", "scripts/slurm/generic.sbatch",
           "scripts/slurm/evaluate_lumi.sbatch", "scripts/slurm/evaluate_generic.sbatch"]
EVALUATE = "open_clip_simzss evaluate"  # python -m open_clip_simzss evaluate ...
LR_BASE = 3e-5


@pytest.fixture
def stubs(tmp_path):
    """A PATH directory whose srun/sbatch record that they were called; scontrol lists two hosts;
    nvidia-smi fails (no GPU), so the default world size does not depend on the test machine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"

    def stub(name, body):
        path = bin_dir / name
        path.write_text("#!/usr/bin/env bash\n" + body + "\n")
        path.chmod(0o755)

    for name in ("srun", "sbatch"):
        stub(name, f'echo "{name} $*" >> "{calls}"; exit 1')
    stub("scontrol", 'if [ "$1 $2" = "show hostnames" ]; then printf "nid005000\\nnid005001\\n"; else exit 1; fi')
    stub("nvidia-smi", "exit 9")
    return bin_dir, calls, stub


def run(script, stubs, *args, check=True, **env_vars):
    bin_dir = stubs[0]
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/tmp"),
           "USER": "tester", "LANG": "C.UTF-8", **{k: str(v) for k, v in env_vars.items()}}
    proc = subprocess.run(["bash", script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def command_args(stdout, module="training.main"):
    """The (last) printed command that runs ``module`` (a module, or a module and its command): its words, the
    module's arguments, and these as a dict flag -> value (None: a switch)."""
    line = [ln for ln in stdout.splitlines() if module in ln][-1]
    words = shlex.split(line)
    head = module.split()
    start = next(i for i in range(len(words)) if words[i:i + len(head)] == head)
    argv = words[start + len(head):]
    flags = {}
    for i, word in enumerate(argv):
        if word.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            flags[word] = None if nxt is None or nxt.startswith("--") else nxt
    return words, argv, flags


@pytest.mark.parametrize("script", SCRIPTS)
def test_syntax_strict_mode_and_usage_header(script):
    subprocess.run(["bash", "-n", script], cwd=REPO, check=True)
    text = (REPO / script).read_text()
    assert "set -euo pipefail" in text
    assert "Usage" in "\n".join(text.splitlines()[:12]) and "DRY_RUN" in text


def test_coco_recipe_defaults(stubs):
    proc = run("scripts/train_coco.sh", stubs, DRY_RUN=1)
    words, argv, flags = command_args(proc.stdout)
    # torchrun, one node, 8 processes, with the "--" that torch 2.14's torchrun needs before the module
    assert Path(words[0]).name == "torchrun" and words[words.index("-m") + 1] == "--"
    assert words[words.index("--nproc_per_node") + 1] == "8" and "--standalone" in words
    assert flags["--model"] == "simzss-vitb14" and flags["--lambda-concept"] == "0.05"
    assert int(flags["--batch-size"]) * 8 == 16384
    assert float(flags["--lr"]) == pytest.approx(LR_BASE * 16384 / 256)  # x64
    epochs, samples = int(flags["--epochs"]), int(flags["--train-num-samples"])
    steps = epochs * samples // 16384
    assert samples % 16384 == 0 and 4_000_000 <= steps * 16384 < 4_000_000 + epochs * 7 * 16384
    assert int(flags["--warmup"]) == int(0.1 * steps + 0.5)
    assert flags["--precision"] == "amp_bf16" and flags["--force-image-size"] == "224"
    assert (flags["--beta1"], flags["--beta2"], flags["--eps"], flags["--wd"]) == ("0.9", "0.98", "1e-6", "0.2")
    assert flags["--train-data"] == "data/coco/concepts/{00000..00295}.tar"
    assert "--pretrained-image" in flags and flags["--resume"] == "latest"
    assert "global batch 16384" in proc.stderr and "warm-up" in proc.stderr
    assert flags["--simzss-variant"] == "paper" and "paper loss" in proc.stderr
    assert "2048 samples per GPU, more than the paper's 1,024" in proc.stderr  # 8 GPUs: twice the paper's per die


def test_release_variant_and_its_refusal(stubs):
    flags = command_args(run("scripts/train_coco.sh", stubs, DRY_RUN=1, SIMZSS_VARIANT="release").stdout)[2]
    assert flags["--simzss-variant"] == "release"
    bad = run("scripts/train_coco.sh", stubs, DRY_RUN=1, SIMZSS_VARIANT="authors", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: SIMZSS_VARIANT=authors")
    per_die = run("scripts/train_coco.sh", stubs, DRY_RUN=1, NUM_GPUS=16)
    assert command_args(per_die.stdout)[2]["--batch-size"] == "1024" and "note:" not in per_die.stderr


def test_printed_command_is_what_training_main_and_torchrun_accept(stubs):
    from torch.distributed.run import get_args_parser
    from training.params import parse_args
    words, argv, _ = command_args(run("scripts/train_coco.sh", stubs, DRY_RUN=1).stdout)
    launcher = get_args_parser().parse_args(words[1:])
    assert launcher.module and launcher.training_script == "training.main" and launcher.training_script_args == argv
    args = parse_args(argv)
    assert args.batch_size == 2048 and args.lr == pytest.approx(1.92e-3) and args.lambda_concept == 0.05
    assert args.warmup == 25 and args.epochs == 7 and args.beta2 == 0.98


@pytest.mark.parametrize("env, batch, lr", [
    (dict(GLOBAL_BATCH=512, NUM_GPUS=2), 256, LR_BASE * 2),
    (dict(PER_GPU_BATCH=128, NUM_GPUS=4), 128, LR_BASE * 2),
    (dict(GLOBAL_BATCH=1024, NUM_GPUS=1, LR_BASE=8e-5), 1024, 8e-5 * 4),
    (dict(NUM_GPUS=4, LR=1e-4), 4096, 1e-4),
    (dict(WORLD_SIZE=16, LAUNCHER="python"), 1024, LR_BASE * 64),
    (dict(SLURM_NTASKS=32, LAUNCHER="python"), 512, LR_BASE * 64),
])
def test_batch_and_lr_scaling(stubs, env, batch, lr):
    proc = run("scripts/train_coco.sh", stubs, DRY_RUN=1, **env)
    words, _, flags = command_args(proc.stdout)
    assert int(flags["--batch-size"]) == batch and float(flags["--lr"]) == pytest.approx(lr)
    if env.get("LAUNCHER") == "python":
        assert words[1:4] == ["-u", "-m", "training.main"]


def test_gpu_count_from_nvidia_smi(stubs):
    stubs[2]("nvidia-smi", 'for i in 0 1 2 3; do echo "GPU $i: NVIDIA H100 (UUID: GPU-$i)"; done')
    words, _, flags = command_args(run("scripts/train_coco.sh", stubs, "--dry-run").stdout)
    assert words[words.index("--nproc_per_node") + 1] == "4" and flags["--batch-size"] == "4096"


def test_lit_is_the_same_recipe_with_lambda_zero(stubs):
    coco = command_args(run("scripts/train_coco.sh", stubs, DRY_RUN=1, NAME="x").stdout)[1]
    lit = command_args(run("scripts/train_lit.sh", stubs, DRY_RUN=1, NAME="x", LAMBDA_CONCEPT=0.5).stdout)[1]
    diff = [(a, b) for a, b in zip(coco, lit) if a != b]
    assert len(coco) == len(lit) and diff == [("0.05", "0")]
    assert "-lit-" in command_args(run("scripts/train_lit.sh", stubs, "--dry-run").stdout)[2]["--name"]


def test_extra_arguments_come_last_and_recipe_overrides_warn(stubs):
    proc = run("scripts/train_coco.sh", stubs, "--dry-run", "--report-to", "wandb", "--epochs", "3")
    argv = command_args(proc.stdout)[1]
    assert argv[-4:] == ["--report-to", "wandb", "--epochs", "3"]
    assert "warning: --epochs" in proc.stderr


def test_data_directory_becomes_a_brace_pattern(stubs, tmp_path):
    shards = tmp_path / "concepts"
    shards.mkdir()
    for i in range(3):
        (shards / f"{i:05d}.tar").write_bytes(b"")
    (shards / "preprocess_stats.json").write_text("{}")
    flags = command_args(run("scripts/train_coco.sh", stubs, DRY_RUN=1, DATA=shards).stdout)[2]
    assert flags["--train-data"] == f"{shards}/{{00000..00002}}.tar"
    bad = run("scripts/train_coco.sh", stubs, DATA=tmp_path / "missing", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error:")


def test_bad_settings_are_refused(stubs):
    for env in (dict(GLOBAL_BATCH=100, NUM_GPUS=3), dict(EPOCHS="x"), dict(LAUNCHER="mpirun")):
        proc = run("scripts/train_coco.sh", stubs, DRY_RUN=1, check=False, **env)
        assert proc.returncode == 2 and proc.stderr.startswith("error:"), proc.stderr


SLURM_ENV = dict(SLURM_JOB_ID=4242, SLURM_NNODES=2, SLURM_NTASKS=16, SLURM_NTASKS_PER_NODE=8,
                 SLURM_JOB_NODELIST="nid[005000-005001]", SLURM_SUBMIT_DIR=str(REPO))


@pytest.mark.parametrize("sbatch", ["scripts/slurm/lumi.sbatch", "scripts/slurm/generic.sbatch"])
def test_sbatch_dry_run(stubs, sbatch):
    _, calls, _ = stubs
    proc = run(sbatch, stubs, "--report-to", "tensorboard", DRY_RUN=1, **SLURM_ENV)
    assert not calls.exists()  # neither srun nor sbatch ran
    srun_line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("srun "))
    assert "--ntasks=16" in srun_line and "scripts/train_coco.sh --report-to tensorboard" in proc.stdout
    if "lumi" in sbatch:
        assert "--cpu-bind=mask_cpu:fe000000000000,fe00000000000000,fe0000,fe000000,fe,fe00,fe00000000," \
               "fe0000000000" in srun_line
    assert "MASTER_ADDR=nid005000" in proc.stderr and "MASTER_PORT=24242" in proc.stderr
    words, argv, flags = command_args(proc.stdout)
    assert words[1:4] == ["-u", "-m", "training.main"] and flags["--batch-size"] == "1024"
    assert float(flags["--lr"]) == pytest.approx(LR_BASE * 64) and flags["--name"].endswith("-4242")
    assert argv[-2:] == ["--report-to", "tensorboard"]


def srun_runs_task0(stubs):
    """Replace the srun stub by one that records its options and runs the task command itself (as task 0, in
    dry-run mode); returns the file it records to."""
    _, calls, stub = stubs
    stub("srun", f'echo "srun $*" >> "{calls}"\n'
                 'while [ "${1#--}" != "$1" ]; do shift; done\n'
                 'SLURM_PROCID=0 SLURM_LOCALID=0 DRY_RUN=1 exec "$@"')
    return calls


@pytest.mark.parametrize("sbatch", ["scripts/slurm/lumi.sbatch", "scripts/slurm/generic.sbatch"])
def test_sbatch_real_path_with_srun_stub(stubs, tmp_path, sbatch):
    """Not a dry run: the stub srun records its options and runs the task command itself (as task 0, in dry-run
    mode), which checks the quoting of the per-task wrapper down to the training command."""
    calls = srun_runs_task0(stubs)
    job = 900000 + os.getpid()
    proc = run(sbatch, stubs, "--lambda-concept", "0", TRAIN_SCRIPT="scripts/train_lit.sh",
               **dict(SLURM_ENV, SLURM_JOB_ID=job, SLURM_NNODES=1, SLURM_NTASKS=8))
    recorded = calls.read_text()
    assert recorded.startswith("srun ") and "scripts/train_lit.sh --lambda-concept 0" in recorded
    flags = command_args(proc.stdout)[2]
    assert flags["--lambda-concept"] == "0" and flags["--batch-size"] == "2048" and "scontrol" not in recorded
    if "lumi" in sbatch:
        miopen = Path(f"/tmp/tester-miopen-cache-{job}")
        assert miopen.is_dir()  # created by the task wrapper on the node
        miopen.rmdir()


def test_sbatch_outside_slurm_refuses_to_run(stubs):
    proc = run("scripts/slurm/lumi.sbatch", stubs, check=False)
    assert proc.returncode == 2 and "sbatch" in proc.stderr and not stubs[1].exists()


def evaluate_args(argv):
    """``argv`` as simzss-evaluate parses it."""
    from open_clip_simzss.cli.evaluate import build_parser
    return build_parser().parse_args(argv)


def test_evaluate_torchrun_dry_run(stubs):
    from torch.distributed.run import get_args_parser
    stubs[2]("nvidia-smi", 'for i in 0 1 2 3; do echo "GPU $i: NVIDIA H100 (UUID: GPU-$i)"; done')
    proc = run("scripts/evaluate.sh", stubs, "--dry-run", "--quiet", "--shard-size", "50",
               CHECKPOINT="logs/coco-a/checkpoints/epoch_7.pt", SWEEP="0.0:0.4:0.01", PAMR=1)
    words, argv, _ = command_args(proc.stdout, EVALUATE)
    # torchrun on this node's 4 GPUs, with the "--" that torch 2.14's torchrun needs before the module
    assert Path(words[0]).name == "torchrun" and words[words.index("-m") + 1] == "--"
    launcher = get_args_parser().parse_args(words[1:])
    assert launcher.module and launcher.training_script == "open_clip_simzss"
    assert launcher.training_script_args == ["evaluate", *argv]
    assert launcher.nproc_per_node == "4" and launcher.standalone
    args = evaluate_args(argv)
    assert (args.model, args.checkpoint, args.dataset, args.data_root) == (
        "simzss-vitb14", "logs/coco-a/checkpoints/epoch_7.pt", "all", "data")
    # the documented sweep (docs/reproduce.md): selected on 500 training images
    assert (args.background_sweep, args.sweep_on, args.pamr, args.precision) == ("0.0:0.4:0.01", "train:500", True,
                                                                                 "fp32")
    assert args.output == "results/coco-a-epoch_7-sweep-pamr.json"  # no date: a rerun resumes
    assert args.quiet and args.shard_size == 50 and argv[-3:] == ["--quiet", "--shard-size", "50"]
    assert "4 process(es)" in proc.stderr and "selected on train:500" in proc.stderr


def test_evaluate_python_launcher_and_defaults(stubs):
    proc = run("scripts/evaluate.sh", stubs, "--dataset", "voc21", DRY_RUN=1, LAUNCHER="python", PYTHON="/opt/py",
               SLURM_NTASKS=16, CHECKPOINT="hf-hub:org/simzss b", DATASETS="voc20,context59", SWEEP="0:0.4:0.1",
               SWEEP_ON="", PRECISION="amp_bf16", WORKERS=3)
    words, argv, _ = command_args(proc.stdout, EVALUATE)
    assert words[:5] == ["/opt/py", "-u", "-m", *EVALUATE.split()]
    args = evaluate_args(argv)
    assert args.checkpoint == "hf-hub:org/simzss b" and args.precision == "amp_bf16" and args.workers == 3
    assert args.background_sweep == "0:0.4:0.1" and args.sweep_on is None and not args.pamr  # SWEEP_ON="": test split
    assert args.output == "results/simzss-b-voc20-context59-sweep.json"
    assert argv[argv.index("--dataset") + 1] == "voc20,context59" and argv[-2:] == ["--dataset", "voc21"]
    assert args.dataset == "voc21"  # extra arguments come last, so they win
    assert "16 process(es)" in proc.stderr and "selected on the test split" in proc.stderr
    # defaults: one process without a GPU, no threshold sweep, a placeholder for the missing checkpoint
    proc = run("scripts/evaluate.sh", stubs, DRY_RUN=1)
    words, argv, _ = command_args(proc.stdout, EVALUATE)
    assert words[words.index("--nproc_per_node") + 1] == "1"
    assert argv == ["--model", "simzss-vitb14", "--checkpoint", "CHECKPOINT", "--dataset", "all", "--data-root", "data",
                    "--precision", "fp32", "--output", "results/CHECKPOINT.json"]
    assert "per-dataset default background thresholds" in proc.stderr


def test_evaluate_runs_the_command_it_prints(stubs, tmp_path):
    """Not a dry run: a stub python records the arguments and PYTHONPATH it is started with."""
    calls = stubs[1]
    stubs[2]("python-stub", f'printf "%s\\n" "$PYTHONPATH" "$@" > "{calls}"')
    env = dict(LAUNCHER="python", PYTHON=stubs[0] / "python-stub", CHECKPOINT="ckpt.pt",
               OUTPUT=tmp_path / "out" / "r.json")
    printed = command_args(run("scripts/evaluate.sh", stubs, "--restart", DRY_RUN=1, **env).stdout, EVALUATE)[0]
    run("scripts/evaluate.sh", stubs, "--restart", **env)
    pythonpath, *args = calls.read_text().splitlines()
    assert args == printed[1:] and pythonpath == f"{REPO}/src"
    assert (tmp_path / "out").is_dir()  # the output's folder exists before the evaluation starts


def test_evaluate_bad_settings_are_refused(stubs):
    for env in (dict(SWEEP="0:0.4"), dict(SWEEP_ON="train:500"), dict(SWEEP="0:0.4:0.1", SWEEP_ON="train:0"),
                dict(SWEEP="0:0.4:0.1", SWEEP_ON="test"), dict(PRECISION="fp16"), dict(PAMR="yes"),
                dict(LAUNCHER="mpirun"), dict(NUM_GPUS=0), dict(NNODES=2), dict(WORKERS=-1)):
        proc = run("scripts/evaluate.sh", stubs, DRY_RUN=1, check=False, **env)
        assert proc.returncode == 2 and proc.stderr.startswith("error:") and not proc.stdout, (env, proc.stderr)
    proc = run("scripts/evaluate.sh", stubs, check=False)  # a real run needs the checkpoint
    assert proc.returncode == 2 and proc.stderr.startswith("error: CHECKPOINT is not set")


def sbatch_header(script):
    """The #SBATCH options of ``script``: option -> value (None: a switch)."""
    options = [ln[len("#SBATCH "):].partition("=") for ln in (REPO / script).read_text().splitlines()
               if ln.startswith("#SBATCH --")]
    return {name: value if eq else None for name, eq, value in options}


@pytest.mark.parametrize("sbatch", ["scripts/slurm/evaluate_lumi.sbatch", "scripts/slurm/evaluate_generic.sbatch"])
def test_evaluate_sbatch_dry_run(stubs, sbatch):
    header, training = sbatch_header(sbatch), sbatch_header(sbatch.replace("evaluate_", ""))
    assert header["--job-name"] == "simzss-eval" and header["--nodes"] == "1"
    assert header["--time"] < training["--time"]  # HH:MM:SS
    # outside a job: the wrapper's one node, whatever the training script's default; TRAIN_SCRIPT does not apply
    proc = run(sbatch, stubs, "--quiet", DRY_RUN=1, TRAIN_SCRIPT="scripts/train_lit.sh", CHECKPOINT="c.pt")
    assert not stubs[1].exists()  # srun did not run
    srun_line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("srun "))
    assert "--nodes=1 --ntasks=8 " in srun_line and "scripts/evaluate.sh --quiet" in proc.stdout
    words, argv, _ = command_args(proc.stdout, EVALUATE)
    assert words[1:5] == ["-u", "-m", *EVALUATE.split()] and argv[-1] == "--quiet"
    assert "8 process(es)" in proc.stderr and "training.main" not in proc.stdout
    # in a job: its nodes and tasks
    proc = run(sbatch, stubs, DRY_RUN=1, **SLURM_ENV)
    assert "--ntasks=16" in proc.stdout and "16 process(es)" in proc.stderr and "MASTER_PORT=24242" in proc.stderr
    assert run(sbatch, stubs, check=False).returncode == 2  # outside SLURM, not a dry run


@pytest.mark.parametrize("sbatch", ["scripts/slurm/evaluate_lumi.sbatch", "scripts/slurm/evaluate_generic.sbatch"])
def test_evaluate_sbatch_real_path_with_srun_stub(stubs, sbatch):
    calls = srun_runs_task0(stubs)
    job = 910000 + os.getpid()
    proc = run(sbatch, stubs, "--quiet", CHECKPOINT="logs/x y/checkpoints/epoch_7.pt", SWEEP="0.0:0.4:0.01",
               **dict(SLURM_ENV, SLURM_JOB_ID=job, SLURM_NNODES=1, SLURM_NTASKS=8))
    recorded = calls.read_text()
    assert recorded.startswith("srun --nodes=1 --ntasks=8 ") and "scripts/evaluate.sh --quiet" in recorded
    args = evaluate_args(command_args(proc.stdout, EVALUATE)[1])
    assert args.checkpoint == "logs/x y/checkpoints/epoch_7.pt" and args.sweep_on == "train:500" and args.quiet
    assert args.output == "results/x-y-epoch_7-sweep.json"
    if "lumi" in sbatch:
        miopen = Path(f"/tmp/tester-miopen-cache-{job}")
        assert miopen.is_dir()  # created by the task wrapper on the node
        miopen.rmdir()


def test_download_dry_run_prints_the_pipeline_and_writes_nothing(stubs, tmp_path):
    out = tmp_path / "coco"
    proc = run("scripts/download_coco.sh", stubs, "--dry-run", OUT=out, SPLITS="train2017 val2017")
    assert not out.exists()
    lines = proc.stdout.splitlines()
    i2d = [shlex.split(ln) for ln in lines if ln.startswith("img2dataset ")]
    assert len(i2d) == 2
    words = i2d[0]
    opt = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}
    assert opt["--output_format"] == "webdataset" and opt["--input_format"] == "jsonl"
    assert opt["--url_col"] == "url" and opt["--caption_col"] == "caption"
    assert opt["--image_size"] == "256" and opt["--resize_mode"] == "keep_ratio"
    assert opt["--output_folder"] == f"{out}/raw/train2017" and opt["--number_sample_per_shard"] == "2000"
    assert any("captions_train2017.json" in ln and ln.startswith("unzip ") for ln in lines)
    pre = shlex.split(next(ln for ln in lines if "open_clip_simzss preprocess" in ln))
    assert pre[pre.index("--input") + 1] == f"{out}/raw/train2017/*.tar"
    assert pre[pre.index("--output") + 1] == f"{out}/concepts"
    assert f"DATA={out}/concepts" in proc.stdout


def test_download_builds_shuffled_caption_rows(stubs, tmp_path):
    """Steps 2-4 for real, with the annotations already there, img2dataset and the preprocessing stubbed."""
    out = tmp_path / "coco"
    (out / "annotations").mkdir(parents=True)
    images = [{"id": i, "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg"} for i in range(20)]
    annotations = [{"id": 1000 + k, "image_id": k // 5, "caption": f"  A dog  number {k}\n"} for k in range(100)]
    (out / "annotations" / "captions_train2017.json").write_text(json.dumps(
        {"images": images, "annotations": annotations}))
    calls = stubs[1]
    stubs[2]("img2dataset", f'echo "img2dataset $*" >> "{calls}"')
    real_python = subprocess.run(["bash", "-c", "command -v python3"], capture_output=True, text=True).stdout.strip()
    stubs[2]("python-wrapper", f'if [ "$1 $2 $3" = "-m open_clip_simzss preprocess" ]; then echo "preprocess $*" >> '
                               f'"{calls}"; exit 0; fi\nexec {real_python} "$@"')
    run("scripts/download_coco.sh", stubs, OUT=out, PYTHON=stubs[0] / "python-wrapper")
    rows = [json.loads(line) for line in (out / "metadata" / "train2017.jsonl").read_text().splitlines()]
    assert len(rows) == 100 and {r["caption_id"] for r in rows} == {a["id"] for a in annotations}
    assert rows[0]["caption"] == f"A dog number {rows[0]['caption_id'] - 1000}"
    assert all(r["url"].endswith(f"{r['image_id']:012d}.jpg") for r in rows)
    assert [r["caption_id"] for r in rows] != sorted(r["caption_id"] for r in rows)  # shuffled
    recorded = calls.read_text()
    assert "img2dataset --url_list" in recorded and "preprocess -m open_clip_simzss preprocess" in recorded
    # rerun: rows exist, nothing is rebuilt; same seed gives the same order
    before = (out / "metadata" / "train2017.jsonl").read_text()
    run("scripts/download_coco.sh", stubs, OUT=out, PYTHON=stubs[0] / "python-wrapper")
    assert (out / "metadata" / "train2017.jsonl").read_text() == before


@pytest.mark.slow
def test_train_coco_really_trains_simzss_tiny(stubs, tmp_path, annotated_shards):
    """The composed command end to end (one process, 2 steps of simzss-tiny on CPU, concepts in the shards)."""
    proc = run("scripts/train_coco.sh", stubs, "--device", "cpu", LAUNCHER="python", DATA=Path(annotated_shards).parent,
               MODEL="simzss-tiny", IMAGE_SIZE="", PRETRAINED_IMAGE=0, GLOBAL_BATCH=4, SAMPLES_SEEN=8, EPOCHS=1,
               WORKERS=1, PRECISION="fp32", LOGS=tmp_path / "logs", NAME="smoke", HF_HUB_OFFLINE=1,
               OMP_NUM_THREADS=1, PYTHON=sys.executable)
    log_dir = tmp_path / "logs" / "smoke"
    history = [json.loads(line) for line in (log_dir / "history-rank0.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all(h["num_concepts"] > 0 and h["concept_loss"] > 0 for h in history)
    params = dict(line.split(": ", 1) for line in (log_dir / "params.txt").read_text().splitlines())
    assert float(params["lr"]) == pytest.approx(LR_BASE * 4 / 256) and params["batch_size"] == "4"
    assert params["precision"] == "fp32" and params["beta2"] == "0.98" and params["lambda_concept"] == "0.05"
    assert (log_dir / "checkpoints" / "epoch_1.pt").exists(), proc.stderr[-2000:]
