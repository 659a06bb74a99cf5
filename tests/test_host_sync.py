"""Host-device syncs of one training step, counted (docs/performance.md "Host syncs").

On an accelerator, reading a value out of a device tensor (``.item()``, ``int(t)``, ``bool(t)``, ``.tolist()``)
or running an op whose output size depends on the data (``nonzero``, ``unique``, ``bincount``, boolean-mask
indexing) makes the host wait for the device. On the CPU nothing waits, so these tests count the calls that
would: every such call made while the step runs, on tensors the step computes (the loader's CPU batch and its
``BatchSizes`` are read before the step, as the trainer does). Each budget below is the number listed in
docs/performance.md; a new sync makes its test fail.
"""
import math
import socket
import types
from contextlib import contextmanager

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import open_clip_simzss
from open_clip_simzss.loss import SimZSSLoss, total_loss
from open_clip_simzss.batch import BatchSizes

STEP_BUDGET = 0  # a single-process step given the batch's BatchSizes (what training.main does)
FORWARD_WITHOUT_SIZES_BUDGET = 1  # SimZSS.forward reads the sizes from the device tensors: one tolist()
LOSS_WITHOUT_SIZES_BUDGET = 2  # SimZSSLoss alone: the pooling slots and the classifier size
DISTRIBUTED_LOSS_BUDGET = 2  # per rank: the concept counts of the ranks, the distinct ids of the global batch
LOGGING_STEP_BUDGET = 1  # the trainer, per logging step (--log-every-n-steps, the epoch's last): one tolist()

_TENSOR_METHODS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__", "nonzero", "unique",
                   "unique_consecutive", "bincount", "masked_select", "cpu", "numpy")
_TORCH_FUNCTIONS = ("nonzero", "unique", "unique_consecutive", "bincount", "masked_select")


class SyncCounter:
    """Counts the calls that would sync on an accelerator (the outermost one only: ``Tensor.unique`` calls
    ``torch.unique``), with where they come from."""

    def __init__(self):
        self.calls = []
        self._depth = 0

    def _wrap(self, name, fn, is_sync=lambda *a, **k: True):
        def wrapper(*args, **kwargs):
            counted = self._depth == 0 and is_sync(*args, **kwargs)
            if counted:
                import traceback
                frame = traceback.extract_stack(limit=2)[0]
                self.calls.append(f"{name} at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}")
            self._depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
        return wrapper

    @contextmanager
    def counting(self, monkeypatch):
        with monkeypatch.context() as m:
            for name in _TENSOR_METHODS:
                m.setattr(torch.Tensor, name, self._wrap(f"Tensor.{name}", getattr(torch.Tensor, name)))
            for name in _TORCH_FUNCTIONS:
                m.setattr(torch, name, self._wrap(f"torch.{name}", getattr(torch, name)))

            def boolean_index(tensor, index):  # x[mask] sizes its output by the mask's count
                parts = index if isinstance(index, tuple) else (index,)
                return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)
            m.setattr(torch.Tensor, "__getitem__",
                      self._wrap("Tensor[bool mask]", torch.Tensor.__getitem__, boolean_index))
            yield self


@pytest.fixture
def counter(monkeypatch):
    c = SyncCounter()
    with c.counting(monkeypatch):
        yield c


def test_the_counter_sees_every_kind_of_sync(monkeypatch):
    x = torch.tensor([0.0, 2.0, 2.0])
    c = SyncCounter()
    with c.counting(monkeypatch):
        x.sum().item(), float(x[1]), int(x[1]), bool(x.any()), x.tolist(), x.nonzero(), torch.unique(x)
        x.unique(), torch.bincount(x.long()), x[x > 1], x[torch.tensor([0, 1])], x[1:], range(10)[x.long()[1]]
    assert [call.split(" at ")[0] for call in c.calls] == [
        "Tensor.item", "Tensor.__float__", "Tensor.__int__", "Tensor.__bool__", "Tensor.tolist", "Tensor.nonzero",
        "torch.unique", "Tensor.unique", "torch.bincount", "Tensor[bool mask]", "Tensor.__index__"]


# --- one training step -----------------------------------------------------------------------------------------
CAPTIONS = ["a cat on a mat", "a dog and a dog", "a red bus near a tree", "two tennis rackets"]
# (caption, token positions, concept id): repeated ids (fewer classifier rows than concepts), two images with
# two concepts, one with none, a concept of two tokens.
CONCEPTS = [(0, [2], 5), (0, [5], 8), (1, [2], 5), (1, [5], 5), (2, [3, 4], 2), (2, [6], 8)]


def make_batch(start=0, stop=len(CAPTIONS)):
    torch.manual_seed(7)
    text = open_clip_simzss.get_tokenizer("simzss-tiny")(CAPTIONS)
    rows = [c for c in CONCEPTS if start <= c[0] < stop]
    mask = torch.zeros(len(rows), text.shape[1], dtype=torch.bool)
    for i, (_, positions, _) in enumerate(rows):
        mask[i, positions] = True
    return dict(
        image=torch.randn(len(CAPTIONS), 3, 112, 112)[start:stop], text=text[start:stop],
        concept_ids=torch.tensor([c[2] for c in rows]), concept_image_index=torch.tensor([c[0] - start for c in rows]),
        concept_token_mask=mask,
    )


def model_and_loss(variant, **loss_kwargs):
    torch.manual_seed(0)
    model = open_clip_simzss.create_model("simzss-tiny", simzss_variant=variant)
    return model, SimZSSLoss(lambda_concept=0.5, variant=variant, **loss_kwargs)


def step(model, loss_fn, batch, **forward_kwargs):
    """Forward, loss, backward: (loss, concept loss, text-tower gradients), detached."""
    model.zero_grad(set_to_none=True)
    losses = loss_fn(**model(**batch, **forward_kwargs))
    loss = total_loss(losses)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), losses["concept_loss"].detach(), grads


@pytest.mark.parametrize("variant", ["paper", "release"])
def test_a_training_step_given_the_batch_sizes_has_no_sync(variant, monkeypatch):
    model, loss_fn = model_and_loss(variant)
    batch = make_batch()
    sizes = BatchSizes.of(**{k: v for k, v in batch.items() if k != "image"})  # on the loader's CPU batch
    assert sizes == BatchSizes(text_length=8, concept_tokens=7, concepts_per_image=2, concept_classes=3)
    c = SyncCounter()
    with c.counting(monkeypatch):
        fast = step(model, loss_fn, batch, batch_sizes=sizes)
    assert len(c.calls) == STEP_BUDGET, c.calls
    # Same numbers as the path that reads the sizes from the tensors (bit for bit), which has its own budget.
    with c.counting(monkeypatch):
        slow = step(model, loss_fn, batch)
    assert len(c.calls) - STEP_BUDGET == FORWARD_WITHOUT_SIZES_BUDGET, c.calls
    assert fast[0].item() > 0 and fast[1].item() > 0
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
    assert fast[2].keys() == slow[2].keys() and all(torch.equal(fast[2][k], slow[2][k]) for k in fast[2])


@pytest.mark.parametrize("variant", ["paper", "release"])
def test_the_loss_alone_reads_its_two_sizes(variant, counter):
    model, loss_fn = model_and_loss(variant)
    with torch.no_grad():
        out = model(**make_batch())
    out.pop("batch_sizes")
    counter.calls.clear()
    loss_fn(**out)
    assert len(counter.calls) == LOSS_WITHOUT_SIZES_BUDGET, counter.calls


def _distributed_worker(rank, port, out_path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        batch = make_batch(2 * rank, 2 * rank + 2)
        sizes = BatchSizes.of(**{k: v for k, v in batch.items() if k != "image"})
        counts = {}
        for variant in ("paper", "release"):
            model, loss_fn = model_and_loss(variant, rank=rank, world_size=2, gather_with_grad=True)
            out = model(**batch, batch_sizes=sizes)
            with pytest.MonkeyPatch.context() as monkeypatch:
                c = SyncCounter()
                with c.counting(monkeypatch):
                    total_loss(loss_fn(**out)).backward()
            counts[variant] = c.calls
        torch.save(counts, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_the_distributed_loss_has_its_two_syncs(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_distributed_worker, args=(port, str(tmp_path / "calls")), nprocs=2, join=True)
    for rank in range(2):
        for variant, calls in torch.load(tmp_path / f"calls.{rank}", weights_only=True).items():
            assert len(calls) == DISTRIBUTED_LOSS_BUDGET, (rank, variant, calls)


# --- the trainer ------------------------------------------------------------------------------------------------
class FakeLoader(list):
    """Batches as data.Batcher yields them: (images, texts, concepts with their BatchSizes, counts)."""

    def __init__(self, batches):
        super().__init__(batches)
        self.num_batches, self.num_samples = len(batches), len(batches) * len(CAPTIONS)


def test_the_trainer_syncs_once_per_logging_step(monkeypatch):
    from training.main import create_optimizer
    from training.train import train_one_epoch

    batch = make_batch()
    concepts = {k: batch[k] for k in ("concept_ids", "concept_image_index", "concept_token_mask")}
    concepts["batch_sizes"] = BatchSizes.of(batch["text"], **concepts)
    loader = FakeLoader([(batch["image"], batch["text"], concepts, (0, 0, 0))] * 3)
    data = {"train": types.SimpleNamespace(dataloader=loader, set_epoch=lambda epoch: None)}
    args = types.SimpleNamespace(
        device="cpu", precision="fp32", lambda_concept=0.5, skip_scheduler=True, horovod=False, grad_clip_norm=1.0,
        log_every_n_steps=2, batch_size=len(CAPTIONS), world_size=1, rank=0, local_rank=0, wandb=False,
        opt="adamw", lr=1e-3, wd=0.1, beta1=0.9, beta2=0.98, eps=1e-6)
    model, loss_fn = model_and_loss("paper")
    optimizer = create_optimizer(model, args)
    c = SyncCounter()
    with c.counting(monkeypatch):
        history = train_one_epoch(model, data, loss_fn, 0, optimizer, None, None, args)
    assert len(c.calls) == 2 * LOGGING_STEP_BUDGET, c.calls  # steps 0 and 2 log, step 1 does not
    assert [h["step"] for h in history] == [0, 1, 2]
    assert all(isinstance(h[k], float) and math.isfinite(h[k]) for h in history
               for k in ("loss", "contrastive_loss", "concept_loss", "concept_accuracy"))
    assert history[0]["loss"] == pytest.approx(history[0]["contrastive_loss"] + history[0]["concept_loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch's own sync detector")
@pytest.mark.parametrize("variant", ["paper", "release"])
def test_no_sync_on_cuda(variant):
    model, loss_fn = model_and_loss(variant)
    model = model.cuda()
    batch = make_batch()
    sizes = BatchSizes.of(**{k: v for k, v in batch.items() if k != "image"})
    batch = {k: v.cuda() for k, v in batch.items()}
    step(model, loss_fn, batch, batch_sizes=sizes)  # warm-up: library handles, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        model.zero_grad(set_to_none=True)
        total_loss(loss_fn(**model(**batch, batch_sizes=sizes))).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
