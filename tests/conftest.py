import os

# Tests never reach the network: towers are built with random weights (SPEC §6).
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
