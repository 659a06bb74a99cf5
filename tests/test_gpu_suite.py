"""benchmarks/gpu_suite.py: the smoke run (every section's code path on CPU at tiny sizes) and its report, the
FLOP count, the peak table, the out-of-memory halving, and bad input (one line, exit status 2)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.slow  # processes, training or installs (make test-fast leaves it out)

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.py"
PEAK = 0.25  # TFLOP/s passed to the smoke run, so that its FLOP utilisation is computed


def run_suite(*args, timeout=60):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, str(SUITE), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("suite") / "smoke"
    proc = run_suite("--smoke", "--peak-tflops", str(PEAK), "--output", str(prefix), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(Path(f"{prefix}.json").read_text()), Path(f"{prefix}.md").read_text(), proc.stdout


@pytest.fixture(scope="module")
def suite_module():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_suite
        yield gpu_suite
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_smoke_report_has_every_section(smoke):
    result, table, stdout = smoke
    assert "errors" not in result
    assert result["smoke"] and result["model"] == "simzss-tiny" and result["environment"]["device"] == "cpu"
    env = result["environment"]
    assert env["torch"] == torch.__version__ and env["load_average_before"] >= 0 and env["load_average_after"] >= 0
    assert env["peak_tflops"] == PEAK and env["peak_source"] == "--peak-tflops"
    # Progress is printed section by section.
    for number in range(1, 6):
        assert f"] {number}. " in stdout

    batches = [r["batch_size"] for r in result["training_step"]]
    assert batches == list(result["plan"]["batch_sizes"])
    for row in result["training_step"]:
        for mode in ("LiT", "SimZSS"):
            assert row[mode]["img_per_s"] == pytest.approx(row["batch_size"] / row[mode]["step_s"])
            assert row[mode]["peak_mib"] is None  # no allocator statistics on the CPU
        assert row["time_ratio"] == pytest.approx(row["SimZSS"]["step_s"] / row["LiT"]["step_s"])
        assert row["concepts"] == 2 * row["batch_size"]  # the synthetic captions carry two concepts each
        ops = row["concept_ops"]
        assert all(ops[k] > 0 for k in ("eq1_2", "eq3_4", "eq7_9"))
        assert ops["share_of_step"] == pytest.approx((ops["eq1_2"] + ops["eq3_4"] + ops["eq7_9"])
                                                     / row["SimZSS"]["step_s"])

    trim = result["text_trimming"]
    assert trim["can_trim"] and trim["context_length"] == 77 and 2 < trim["tokens_kept"] < 77
    assert trim["speedup"] == pytest.approx(trim["off_s"] / trim["on_s"])

    trainer = result["trainer"]
    assert set(trainer["runs"]) == {"uncached", "cached"}
    assert trainer["speedup"] == pytest.approx(trainer["runs"]["cached"]["samples_per_s"]
                                               / trainer["runs"]["uncached"]["samples_per_s"])
    for run in trainer["runs"].values():
        assert run["samples_per_s"] > 0 and 0 <= run["data_wait_share"] < 1
        assert run["concepts_per_batch"] > 0  # the SimZSS loss ran, on the shards' concepts

    cases = [r["case"] for r in result["segmentation"]]
    assert cases == ["voc21 500x375", "cityscapes 2048x1024"]
    assert [r["windows_per_image"] for r in result["segmentation"]] == [2, 3]
    assert all(0 < r["overhead_share"] < 1 and r["images_per_s"] > 0 for r in result["segmentation"])

    assert "(smoke run)" in table and env["gpu"] in table and env["torch"] in table and result["date"] in table
    for title in ("One training step", "Text-tower trimming", "Cached training step", "Zero-shot segmentation",
                  "Trainer end to end", "Ratios"):
        assert f"## {title}" in table
    for name, value in result["ratios"].items():
        assert f"| {name} | {value:.4g} |" in table


def test_every_ratio_is_finite_and_positive(smoke):
    result, _, _ = smoke
    ratios = result["ratios"]
    expected = {f"step_time_simzss_over_lit_b{b}" for b in result["plan"]["batch_sizes"]} | {
        "text_trim_speedup", "cached_step_speedup", "cached_step_mfu", "trainer_cached_over_uncached"}
    assert set(ratios) == expected  # no memory ratios on the CPU
    for name, value in ratios.items():
        assert math.isfinite(value) and value > 0, name
    cached = result["cached_step"]
    assert ratios["cached_step_mfu"] == pytest.approx(cached["flops_per_step"] / cached["step_s"] / (PEAK * 1e12))
    largest = result["training_step"][-1]
    assert ratios["cached_step_speedup"] == pytest.approx(cached["samples_per_s"] / largest["SimZSS"]["img_per_s"])


def test_cached_step_flops_are_forward_plus_backward(smoke, tiny_model):
    """The text tower's linear layers alone cost 2 x params x tokens forward and twice that backward (inputs and
    weights): the count must be at least 6 x params x tokens, and the rest (attention over a few positions, the
    projection, the losses) is small at these sizes."""
    cached = smoke[0]["cached_step"]
    linear = sum(m.weight.numel() for m in tiny_model.text.transformer.modules()
                 if isinstance(m, torch.nn.Linear))
    linear += sum(m.in_proj_weight.numel() for m in tiny_model.text.transformer.modules()
                  if isinstance(m, torch.nn.MultiheadAttention))
    estimate = 6 * linear * cached["batch_size"] * cached["text_positions"]
    assert estimate <= cached["flops_per_step"] <= 1.5 * estimate


def test_peak_table(suite_module):
    peak = suite_module.peak_tflops

    def lookup(name, override=None):
        return peak(SimpleNamespace(device="cuda", peak_tflops=override), name)[0]

    assert lookup("NVIDIA H200") == 989.0
    assert lookup("NVIDIA H100 80GB HBM3") == 989.0
    assert lookup("NVIDIA H100 PCIe") == 756.0  # the longer key wins
    assert lookup("NVIDIA L40S") == 362.0 and lookup("NVIDIA L4") == 121.0
    assert lookup("Some Future GPU") is None
    assert lookup("NVIDIA H200", override=500.0) == 500.0
    assert peak(SimpleNamespace(device="cpu", peak_tflops=None), "CPU (x86_64)")[0] is None


def test_out_of_memory_halves_the_batch(suite_module):
    tried = []

    def measure(batch_size):
        tried.append(batch_size)
        if batch_size > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return {"batch_size": batch_size}

    assert suite_module.largest_fitting(measure, 16, torch.device("cpu")) == (2, {"batch_size": 2})
    assert tried == [16, 8, 4, 2]
    with pytest.raises(ValueError):  # only out-of-memory is retried
        suite_module.largest_fitting(lambda b: int("x"), 16, torch.device("cpu"))


@pytest.mark.parametrize("args, message", [
    (["--smoke", "--peak-tflops", "0"], "--peak-tflops must be positive"),
    (["--smoke", "--workers", "0"], "--workers must be >= 1"),
    (["--smoke", "--device", "tpu"], "--device tpu"),
    (["--device", "cpu"], "--smoke"),  # the full sizes are refused on the CPU
] + ([] if torch.cuda.is_available() else [([], "no CUDA device")]))  # the full run's default device is cuda
def test_bad_input_is_one_line(suite_module, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        suite_module.parse_args(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
