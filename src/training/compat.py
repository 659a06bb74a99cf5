"""The trainer's fix for OpenCLIP 3.3 under NumPy >= 2.4 (``open_clip_simzss.compat`` says why): ``--imagenet-val``
needs ``open_clip_train.zero_shot.accuracy``, which NumPy 2.4 breaks. Replaced in its module, only when a probe
shows the original fails; once fixed upstream, nothing is replaced.
"""
from open_clip_simzss.compat import accuracy_is_broken, topk_correct


def fix_open_clip_zero_shot():
    """Make ``--imagenet-val`` work: ``run()`` looks ``accuracy`` up in its module at call time."""
    from open_clip_train import zero_shot
    if zero_shot.accuracy is not topk_correct and accuracy_is_broken(zero_shot.accuracy):
        zero_shot.accuracy = topk_correct
