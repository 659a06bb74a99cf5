"""Workflows: whole jobs built on the library, and the only part of the package that starts other programs
(``launch.py``: the trainer and the package's commands, as subprocesses).

``synthetic`` (seeded captioned scenes with masks), ``demo`` (SimZSS vs LiT end to end on them, on a CPU),
``studies`` (the paper's ablations on the demo's bench), ``app`` (the web app's requests and its default model)
and ``page`` (its Gradio page). May import every library subpackage; the command line (``cli/``) sits above it,
and nothing below imports it.
"""
