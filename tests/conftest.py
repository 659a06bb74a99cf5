import os

# Tests never reach the network: towers are built with random weights (README, "Tests").
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model():
    import open_clip_simzss
    torch.manual_seed(0)
    return open_clip_simzss.create_model("simzss-tiny")


@pytest.fixture(scope="session")
def tokenizer():
    import open_clip
    import open_clip_simzss  # noqa: F401  (registers the configs)
    return open_clip.get_tokenizer("simzss-tiny")


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
