"""Weights: from a reference to a model and back (README, "Python quick start", "Checkpoints that travel").

``read`` (every checkpoint file is read there, safetensors or ``weights_only=True``, and fitted strictly),
``resolve`` (a model name and/or checkpoint reference -> a ``ModelSource``, once), ``build`` (a ``ModelSource`` ->
a model, its weights read once), ``load`` (``load_model``: the two together), ``dvt`` (DVT's released denoiser
weights), ``identity`` (a digest of a tower's outputs), ``save`` (model folders), ``authors`` (the authors'
released checkpoints -> model folders) and ``hub`` (the Hugging Face hub). May import the model, the DVT module,
the model configs and the package's utilities; never segmentation, evaluation, workflows or the command line.
This ``__init__`` imports nothing: import a module from where it lives (the package face, ``open_clip_simzss``,
re-exports the public names).
"""
