"""Narrow, self-disabling fixes for bugs of pinned dependencies under NumPy >= 2.4.

Both OpenCLIP's trainer (``open_clip_train.zero_shot.accuracy``, used by ``--imagenet-val``) and clip_benchmark
1.6.2 convert counts with ``float()`` of a 1-element 1-D array. NumPy deprecated that in 1.25 and NumPy 2.4 made
it ``TypeError: only 0-dimensional arrays can be converted to Python scalars``. We replace just that function,
in its module, only when a probe shows the original fails; once fixed upstream, nothing is replaced: the
trainer's in ``training/compat.py``, clip_benchmark's in ``evaluation/clip_benchmark.py``.
"""


def accuracy_is_broken(accuracy) -> bool:
    """Whether ``accuracy(output, target, topk)`` raises NumPy 2.4's TypeError on a tiny probe."""
    import torch
    try:
        accuracy(torch.tensor([[0.0, 1.0]]), torch.tensor([1]), topk=(1,))
    except TypeError:
        return True
    return False


def topk_correct(output, target, topk=(1,)):
    """Numbers of samples whose label is among the top-k predictions: what ``open_clip_train.zero_shot.accuracy``
    returns (counts; its caller divides by the number of samples)."""
    ranked = output.topk(max(topk), dim=1).indices  # [N, kmax] class ids, best first
    hits = ranked.eq(target.view(-1, 1))            # a label appears at most once per row
    return [float(hits[:, :k].sum().item()) for k in topk]
