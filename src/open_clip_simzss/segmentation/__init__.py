"""Zero-shot segmentation with a SimZSS model, in plain PyTorch (docs/evaluation.md, "Inference").

``protocol`` (how images are segmented: one object, checked once), ``windows`` (the protocol's geometry),
``engine`` (the sliding-window engine: dense scores for any classifier), ``resize`` (labels and confidence at the
image's size), ``background`` (the background rule), ``classifier`` (text rows and prompt templates),
``fewshot`` (rows from labelled pixels, the paper's Table 8), ``pamr`` (mask refinement), ``labels`` (label
conventions), ``segmenter`` (the ``Segmenter`` API: any image, any words) and ``pictures`` (overlays, PCA, heat
maps). May import the model's interface (``encode_dense``, ``encode_text``), ``weights`` (to load a model) and the
package's utilities; never the evaluation, the workflows or the command line.
This ``__init__`` imports nothing: import a module from where it lives (the package face, ``open_clip_simzss``,
re-exports the public names).
"""
