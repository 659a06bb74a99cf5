"""Distributed equivalence (docs/method.md "Distributed training"): 2 gloo processes, each with half of a batch,
give the loss and the (DDP-averaged) text-tower gradients of one process holding the whole batch, for both the
paper and the release variant."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import open_clip_simzss
from open_clip_simzss.loss import SimZSSLoss, total_loss

pytestmark = pytest.mark.slow  # processes, training or installs (make test-fast leaves it out)

WORLD = 2
BATCH = 6
CAPTIONS = [
    "a cat on a mat", "a dog and a dog", "a red bus near a tree", "nothing here",
    "two tennis rackets", "a man riding a horse on the beach",
]
# (caption, token positions, concept id); rank 0 holds captions 0-2 (4 concepts), rank 1 captions 3-5 (2)
CONCEPTS = [(0, [2], 3), (0, [5], 8), (1, [2], 1), (2, [3, 4], 2), (4, [2, 3], 9), (5, [3], 1), (5, [6, 7], 4)]


def make_batch(start=0, stop=BATCH):
    torch.manual_seed(7)
    tok = open_clip_simzss.get_tokenizer("simzss-tiny")
    images = torch.randn(BATCH, 3, 112, 112)
    text = tok(CAPTIONS)
    rows = [c for c in CONCEPTS if start <= c[0] < stop]
    mask = torch.zeros(len(rows), text.shape[1], dtype=torch.bool)
    for i, (_, positions, _) in enumerate(rows):
        mask[i, positions] = True
    return dict(
        image=images[start:stop], text=text[start:stop],
        concept_ids=torch.tensor([c[2] for c in rows], dtype=torch.long),
        concept_image_index=torch.tensor([c[0] - start for c in rows], dtype=torch.long),
        concept_token_mask=mask,
    )


def loss_and_grads(batch, variant, **loss_kwargs):
    torch.manual_seed(0)
    model = open_clip_simzss.create_model("simzss-tiny", simzss_variant=variant)
    losses = SimZSSLoss(lambda_concept=0.5, variant=variant, **loss_kwargs)(**model(**batch))
    loss = total_loss(losses)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), losses["concept_loss"].detach(), grads


CASES = [("paper", False), ("paper", True), ("release", False), ("release", True)]


def _worker(rank, port, out_path):
    """Every case in one pair of processes (each process start imports torch again: seconds)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        half = BATCH // WORLD
        results = {}
        for variant, local_loss in CASES:
            loss, concept, grads = loss_and_grads(
                make_batch(rank * half, (rank + 1) * half), variant,
                local_loss=local_loss, gather_with_grad=True, rank=rank, world_size=WORLD,
            )
            # what DDP does: average the gradients (and, for the log, the losses) over ranks
            for g in grads.values():
                dist.all_reduce(g)
                g /= WORLD
            for t in (loss, concept):
                dist.all_reduce(t)
                t /= WORLD
            results[f"{variant}-{local_loss}"] = {"loss": loss, "concept": concept, "grads": grads}
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Rank 0's DDP-averaged results of every case, from 2 gloo processes holding half of the batch each."""
    out_path = tmp_path_factory.mktemp("distributed") / "rank0.pt"
    mp.spawn(_worker, args=(_free_port(), str(out_path)), nprocs=WORLD, join=True)
    return torch.load(out_path, weights_only=True)


@pytest.mark.parametrize("variant,local_loss", CASES)
def test_two_processes_equal_one(two_processes, variant, local_loss):
    loss, concept, grads = loss_and_grads(make_batch(), variant)
    assert concept.item() > 0
    result = two_processes[f"{variant}-{local_loss}"]
    assert result["loss"].item() == pytest.approx(loss.item(), abs=1e-5)
    assert result["concept"].item() == pytest.approx(concept.item(), abs=1e-5)
    assert result["grads"].keys() == grads.keys()
    for name, g in grads.items():
        assert torch.allclose(result["grads"][name], g, atol=1e-5), name
