"""What the test files share: the offline environment, one thread per test process, and the fixtures built once
per session (README, "Tests"): one tiny model and its tokenizer, one checkpoint of it, one concept extractor, one
set of annotated shards, the eight benchmarks as tiny fixtures, and the demo's quick bench (built once for all
pytest-xdist workers, and used by the demo, the studies, the app and the notebook tests).

Fixtures that tests may change (a model they train, a folder they write into) stay in their files.
"""
import os

# Tests never reach the network: towers are built with random weights (README, "Tests").
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
# Several test processes share the machine's cores (``make test``: two pytest-xdist workers, and the processes
# they start): one thread each, or their threads stall each other (measured: the suite takes 18 % longer with
# torch's default of one thread per core).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

SEED = 0


def needs_train_extra():
    if importlib.util.find_spec("spacy") is None or importlib.util.find_spec("webdataset") is None:
        pytest.skip("needs the [train] extra: pip install 'open_clip_simzss[train]'")


@pytest.fixture(scope="session")
def tiny_model():
    """simzss-tiny with seeded random weights. Shared: tests must not change it (copy.deepcopy to train)."""
    import open_clip_simzss
    torch.manual_seed(SEED)
    return open_clip_simzss.create_model("simzss-tiny")


@pytest.fixture(scope="session")
def tokenizer():
    import open_clip
    import open_clip_simzss  # noqa: F401  (registers the configs)
    return open_clip.get_tokenizer("simzss-tiny")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model):
    """(path, model): the state dict of ``tiny_model`` as a training checkpoint would hold it."""
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pt"
    torch.save(tiny_model.state_dict(), path)
    return path, tiny_model


@pytest.fixture(scope="session")
def extractor():
    """The default concept extractor (en_core_web_sm, the project's bank): loading spaCy takes seconds."""
    needs_train_extra()
    from open_clip_simzss.concepts.extract import ConceptExtractor
    return ConceptExtractor()


@pytest.fixture(scope="session")
def annotated_shards(tmp_path_factory, extractor):
    """2 img2dataset shards of 8 samples with ``concepts.json`` (the shard pattern)."""
    from tests.helpers.shards import write_shards
    return write_shards(tmp_path_factory.mktemp("annotated-shards"), 2, 8, annotate=extractor.annotate)


@pytest.fixture(scope="session")
def benchmark_root(tmp_path_factory):
    """The eight benchmarks as tiny fixtures under one MMSeg data root (tests/helpers/benchmarks.py)."""
    from tests.helpers.benchmarks import write_benchmarks
    return write_benchmarks(tmp_path_factory.mktemp("benchmarks"))


@pytest.fixture(scope="session")
def shared_tmp(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this session sees (pytest's session folder without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def xdg_cache(shared_tmp) -> Path:
    """The ``XDG_CACHE_HOME`` of the app's and the notebook's default model: never the user's."""
    return shared_tmp / "xdg"


@pytest.fixture(scope="session")
def quick_demo(xdg_cache, shared_tmp) -> Path:
    """``simzss-demo --quick``'s output folder, built once per session for all workers: where the app's default
    model is cached (``$XDG_CACHE_HOME/open_clip_simzss/demo-quick``), so the app and the notebook find it, and
    where the studies add their runs."""
    needs_train_extra()
    from filelock import FileLock

    from open_clip_simzss.cli.demo import main
    folder = xdg_cache / "open_clip_simzss" / "demo-quick"
    with FileLock(str(shared_tmp / "quick-demo.lock")):
        if not (folder / "report" / "report.md").is_file():
            assert main(["--quick", "--output", str(folder)]) == 0
    return folder


@pytest.fixture(autouse=True)
def restore_root_logger():
    """training.main (run in-process by some tests) sets up OpenCLIP's logging on the root logger, whose
    stream handlers would outlive pytest's captured streams: restore the root logger after each test."""
    import logging
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
