"""The Hugging Face hub: upload a model in OpenCLIP's hub layout; ``load_model(checkpoint="org/name")`` or
``create_model("hf-hub:org/name")`` loads it back."""
from pathlib import Path
from typing import Optional, Union

from .load import load_model
from .resolve import clean_model_config


class _BuiltinTokenizer:
    """OpenCLIP's ``save_for_hf`` saves the tokenizer's files; SimZSS uses OpenCLIP's built-in BPE tokenizer
    (``open_clip.get_tokenizer`` rebuilds it from ``text_cfg``), which has none."""

    def save_pretrained(self, dest):
        pass


def write_hub_folder(model, model_cfg: dict, folder: Union[str, Path], model_card: Optional[dict] = None,
                     repo_id: str = "simzss") -> Path:
    """The folder ``open_clip.push_to_hf_hub`` would upload, written by OpenCLIP's own ``save_for_hf``
    (config + ``open_clip_model.safetensors`` + ``open_clip_pytorch_model.bin``) and ``generate_readme``."""
    from open_clip.push_to_hf_hub import generate_readme, save_for_hf
    folder = Path(folder)
    save_for_hf(model, _BuiltinTokenizer(), clean_model_config(model_cfg), folder, safe_serialization="both")
    card = dict({"tags": ("clip", "open_clip", "simzss", "zero-shot-segmentation"),
                 "pipeline_tag": "image-segmentation",
                 "description": "SimZSS (ICLR 2025) zero-shot segmentation model. Load it with "
                                f"`open_clip_simzss.create_model(\"hf-hub:{repo_id}\")` or "
                                f"`simzss-segment --checkpoint {repo_id} ...`."}, **(model_card or {}))
    (folder / "README.md").write_text(generate_readme(card, repo_id.split("/")[-1]), encoding="utf-8")
    return folder


def push_to_hub(checkpoint: str, repo_id: str, model: Optional[str] = None, commit_message: str = "Add model",
                token: Optional[str] = None, private: bool = False, revision: Optional[str] = None,
                create_pr: bool = False, model_card: Optional[dict] = None):
    """Upload a model (folder, checkpoint file + ``model``, or hub id) to the Hugging Face hub; afterwards
    ``create_model("hf-hub:" + repo_id)`` loads it. Needs network access and a token.

    What is uploaded is ``write_hub_folder``'s folder: exactly what ``open_clip.push_to_hf_hub`` writes, by
    OpenCLIP's own ``save_for_hf``. The upload itself calls ``huggingface_hub`` directly: OpenCLIP 3.3.0's
    ``push_to_hf_hub`` imports ``repo_type_and_id_from_hf_id``, which huggingface_hub >= 1.0 no longer exports,
    so with current huggingface_hub it fails (NameError) before uploading anything.
    """
    from tempfile import TemporaryDirectory

    from huggingface_hub import create_repo, upload_folder
    net, _ = load_model(model, checkpoint, device="cpu")
    url = create_repo(repo_id, token=token, private=private, exist_ok=True)
    repo_id = getattr(url, "repo_id", None) or repo_id  # the full id when the owner was implicit
    with TemporaryDirectory() as tmp:
        write_hub_folder(net, net.source.saved_config, tmp, model_card, repo_id=repo_id)
        return upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message, token=token,
                             revision=revision, create_pr=create_pr)
