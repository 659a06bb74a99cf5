"""Optional dependencies: training and concept extraction need the ``[train]`` extra (spaCy, WebDataset).

``import open_clip_simzss``, creating a model and segmenting images never import them; the code paths that do
call :func:`require_train_extra` first, so that a missing package is one clear line, not an ImportError deep in
a traceback.
"""
import importlib.util

TRAIN_EXTRA_MODULES = ("spacy", "webdataset", "braceexpand")


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra to install."""


def require_train_extra(what: str, modules=TRAIN_EXTRA_MODULES):
    """MissingExtraError when one of ``modules`` cannot be imported: "<what> needs the [train] extra: ..."."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"{what} needs the [train] extra ({', '.join(missing)} not installed): "
                                "pip install 'open_clip_simzss[train]'")
