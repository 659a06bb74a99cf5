"""Benchmarks: zero-shot segmentation on the eight standard benchmarks and your own data, and zero-shot
classification with clip_benchmark (docs/evaluation.md).

``datasets`` (readers of the benchmarks' folder layouts and of ``folder:`` datasets), ``metrics`` (mIoU as MMSeg
computes it, threshold sweeps), ``protocol`` (the ``EvaluationProtocol``: what is evaluated and how, checked
once), ``run`` (the ``Evaluation`` that runs it, in shards shared by processes and kept across interruptions),
``state`` (the kept shards), ``ranks`` (the processes of a torchrun/srun evaluation), ``report`` (the paper's
tables) and ``clip_benchmark`` (SimZSS as a clip_benchmark model type). May import ``segmentation``, ``weights``
and the package's utilities; never the workflows, the command line or the trainer.
This ``__init__`` imports nothing: import a module from where it lives (the package face, ``open_clip_simzss``,
re-exports the public names).
"""
