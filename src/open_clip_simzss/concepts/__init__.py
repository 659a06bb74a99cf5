"""Concepts in captions (README, "Concepts in captions"): what SimZSS's concept loss learns from.

``bank`` (the concept bank and stable ids), ``extract`` (the extraction rule: spaCy noun chunks kept by the bank),
``align`` (concepts in OpenCLIP's token positions), ``spacy_model`` (loading a pipeline), ``provenance`` (what
made a stored record), ``shards`` (reading img2dataset tar shards) and ``preprocess`` (``simzss-preprocess``:
concepts into shards). May import the package's utilities (``extras``, ``atomic``, ``images``), OpenCLIP's
tokenizer and spaCy; nothing from the model, the segmentation or the layers above.
This ``__init__`` imports nothing: import a module from where it lives (the package face, ``open_clip_simzss``,
re-exports the public names).
"""
