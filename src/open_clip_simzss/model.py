"""The SimZSS model (paper §3, docs/method.md): a frozen timm ViT ``f_v`` and a trainable OpenCLIP text tower ``f_t``.

The shared space IS the vision tower's space: there is no projection on the vision side, and the text side
has one linear map ``g`` (the text projection). Text concepts (Eq. 1-2) are pooled from the text tower's output
tokens *before* ``g``; this module computes them, ``loss.py`` does Eq. 3-10 (``batch.py``: how a batch's concepts are laid out).

The state-dict layout (``visual.trunk.*``, ``text.*``, ``logit_scale``) is the one of OpenCLIP's
``CustomTextCLIP`` with a ``TimmModel`` vision tower, so a SimZSS checkpoint of a "token"-pooled config also
loads into a plain OpenCLIP model (global features only, see README "Interoperability").
"""
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.model import _build_text_tower  # the builder OpenCLIP's own CustomTextCLIP uses
from open_clip.transformer import text_global_pool

from .batch import BatchSizes
from .denoiser import build_denoiser
from .variants import check_variant

# vision_cfg keys this model understands. They are OpenCLIP's CLIPVisionCfg names (so our JSON configs stay
# readable by OpenCLIP) plus ``timm_model_kwargs`` for towers that need extra timm arguments (simzss-tiny).
_VISION_KEYS = {
    "timm_model_name", "timm_model_pretrained", "timm_pool", "timm_proj", "image_size", "timm_model_kwargs",
    "pretrained_file", "denoiser_cfg",  # denoiser_cfg: optional DVT denoiser on the dense tokens (denoiser.py)
}
_POOLS = {"token": "CLS token after the final norm", "avg": "mean of the patch tokens after the final norm"}


class FrozenVisionTower(nn.Module):
    """``f_v``: a pretrained timm ViT, frozen for real.

    Frozen means: no parameter requires grad, the tower stays in eval mode whatever ``train()`` is
    called with (no dropout / drop-path), and its forward runs under ``torch.no_grad()`` so no graph is built.
    Position embeddings are interpolated to the input size on the fly (timm ``dynamic_img_size``), from the
    tower's native grid (37x37 for DINOv2), so one tower serves 224 training crops and 448 evaluation windows.
    """

    def __init__(
            self,
            timm_model_name: str,
            image_size: int = 224,
            timm_pool: str = "token",
            timm_proj: str = "none",
            timm_model_pretrained: bool = False,
            timm_model_kwargs: Optional[dict] = None,
            pretrained_file: Optional[str] = None,
            denoiser_cfg: Optional[dict] = None,
    ):
        super().__init__()
        if timm_pool not in _POOLS:
            raise ValueError(f"timm_pool must be one of {sorted(_POOLS)}, got {timm_pool!r}")
        if timm_proj not in ("none", "", None):
            raise ValueError("SimZSS has no vision projection (the shared space is the tower's): timm_proj must be 'none'")
        kwargs = dict(timm_model_kwargs or {})
        if pretrained_file:
            # timm's own loader reads timm- and original-format checkpoints (DINOv2 .pth or .safetensors),
            # with weights_only=True, and applies the model's checkpoint filter.
            # custom_load=False: before timm 1.0.31 a tower whose timm config names an .npz file (AugReg, the
            # tiny test tower) would send any local file to the .npz loader.
            kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained_file), custom_load=False)
            timm_model_pretrained = True
        self.trunk = timm.create_model(
            timm_model_name,
            pretrained=timm_model_pretrained,
            num_classes=0,
            global_pool="token",  # keeps timm's final `norm` on every token; we pool ourselves
            dynamic_img_size=True,
            **kwargs,
        )
        self.pool = timm_pool
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.patch_size = int(self.trunk.patch_embed.patch_size[0])
        self.num_prefix_tokens = int(self.trunk.num_prefix_tokens)
        self.width = int(self.trunk.num_features)
        self.denoiser = build_denoiser(self.width, denoiser_cfg)  # None unless configured
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        # The tower is frozen: it never leaves eval mode.
        return super().train(False)

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False):
        """OpenCLIP's ``--lock-image`` hook. The tower is always locked; partial unlocking is refused."""
        if unlocked_groups:
            raise ValueError("SimZSS keeps the whole vision tower frozen: --lock-image-unlocked-groups is not supported")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        pass  # no activations are kept for a frozen tower

    @property
    def pretrained_cfg(self) -> dict:
        return dict(self.trunk.pretrained_cfg)

    def check_input(self, image: torch.Tensor):
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(image.shape)}")
        h, w = image.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")

    def forward_tokens(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns the global token ``z̄_v`` [B, d_v] and the dense tokens ``z_v`` [B, h, w, d_v]."""
        self.check_input(image)
        with torch.no_grad():
            tokens = self.trunk.forward_features(image)  # [B, prefix + h*w, d_v], final norm applied
            patches = tokens[:, self.num_prefix_tokens:]
            global_token = tokens[:, 0] if self.pool == "token" else patches.mean(dim=1)
            h, w = image.shape[-2] // self.patch_size, image.shape[-1] // self.patch_size
            dense = patches.reshape(image.shape[0], h, w, -1)
            if self.denoiser is not None:  # dense tokens only: the global token is the raw tower's
                dense = self.denoiser(dense)
        return global_token, dense

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(image)[0]


def _concept_token_rows(
        text_tokens: torch.Tensor,
        concept_image_index: torch.Tensor,
        concept_token_mask: torch.Tensor,
        num_pairs: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The (concept, position) pairs that are set: (concept of each pair [E], its token [E, d_t]).

    Only these pairs are gathered: M x L x d_t would not fit for big batches. ``num_pairs`` (E, from
    ``BatchSizes``) sizes the pairs on the host; without it, the check and ``nonzero`` are two host syncs.
    """
    if concept_token_mask.shape[0] != concept_image_index.shape[0]:
        raise ValueError("concept_token_mask and concept_image_index disagree on the number of concepts")
    if num_pairs is None:
        if bool((concept_token_mask.sum(dim=1) == 0).any()):
            raise ValueError("every concept needs at least one token position")
        num_pairs = int(concept_token_mask.sum())
    # nonzero_static: the same pairs in the same (row-major) order as nonzero, sized without a sync
    concept_idx, position = torch.nonzero_static(concept_token_mask, size=num_pairs).unbind(dim=1)
    return concept_idx, text_tokens[concept_image_index[concept_idx], position]


def _sum_per_concept(rows: torch.Tensor, concept_idx: torch.Tensor, num_concepts: int) -> torch.Tensor:
    # index_put(accumulate=True), whose CPU kernel is fast; index_add_/scatter_add_ (also the backward of
    # index_select) take ~100 ms per call on these CPU builds.
    return rows.new_zeros(num_concepts, rows.shape[-1]).index_put((concept_idx,), rows, accumulate=True)


def pool_text_concepts(
        text_tokens: torch.Tensor,
        concept_image_index: torch.Tensor,
        concept_token_mask: torch.Tensor,
        num_pairs: Optional[int] = None,
) -> torch.Tensor:
    """Eq. 1: ``c_t^l = mean_{i in S_l} z_t^i``, the mean of a concept's word tokens, before ``g``.

    Args:
        text_tokens: [B, L, d_t] text tower outputs after the final norm.
        concept_image_index: [M] which caption (= which image) each concept comes from.
        concept_token_mask: [M, L] bool, the token positions S_l of each concept.
        num_pairs: the number of set entries of ``concept_token_mask`` (``BatchSizes.concept_tokens``), if
            known on the host.
    Returns:
        [M, d_t]
    """
    concept_idx, picked = _concept_token_rows(text_tokens, concept_image_index, concept_token_mask, num_pairs)
    counts = concept_token_mask.sum(dim=1, keepdim=True).to(picked.dtype)
    return _sum_per_concept(picked, concept_idx, concept_token_mask.shape[0]) / counts


def text_concepts(
        text_tokens: torch.Tensor,
        concept_image_index: torch.Tensor,
        concept_token_mask: torch.Tensor,
        project: Callable[[torch.Tensor], torch.Tensor],
        variant: str = "paper",
        num_pairs: Optional[int] = None,
) -> torch.Tensor:
    """The projected text concepts ``c̃_t`` [M, d_v] (Eq. 1-2), as the chosen variant builds them.

    * ``"paper"``: ``g(mean_{i in S_l} z_t^i)`` (``pool_text_concepts``, then ``project``).
    * ``"release"`` (the authors' code): ``Σ_{i in S_l} normalize(g(z_t^i))``, a sum of unit vectors that is
      not normalised afterwards (a concept of two tokens has a norm up to 2).

    Args:
        text_tokens: [B, L, d_t] text tower outputs after the final norm (before ``g``).
        concept_image_index: [M] the caption of each concept.
        concept_token_mask: [M, L] bool, the token positions of each concept.
        project: the map ``g`` (``SimZSS.project_text``).
        variant: ``"paper"`` or ``"release"`` (docs/method.md).
        num_pairs: the number of set entries of ``concept_token_mask``, if known on the host (``BatchSizes``).
    """
    if check_variant(variant) == "paper":
        return project(pool_text_concepts(text_tokens, concept_image_index, concept_token_mask, num_pairs))
    concept_idx, picked = _concept_token_rows(text_tokens, concept_image_index, concept_token_mask, num_pairs)
    return _sum_per_concept(F.normalize(project(picked), dim=-1), concept_idx, concept_token_mask.shape[0])


class SimZSS(nn.Module):
    """SimZSS: frozen vision tower, trainable text tower and text projection ``g``, learnable logit scale.

    Outputs are dicts (OpenCLIP's ``output_dict`` convention); ``forward`` returns what ``SimZSSLoss`` takes.
    ``simzss_variant`` ("paper" or "release", docs/method.md) chooses how ``forward`` builds text concepts
    (``text_concepts``); it is a training choice, not part of the weights, and must match the loss's variant.
    """

    output_dict: bool

    def __init__(
            self,
            embed_dim: int,
            vision_cfg: dict,
            text_cfg: dict,
            quick_gelu: bool = False,
            init_logit_scale: float = np.log(1 / 0.07),
            init_logit_bias: Optional[float] = None,
            nonscalar_logit_scale: bool = False,
            cast_dtype: Optional[torch.dtype] = None,
            output_dict: bool = True,
            simzss_variant: str = "paper",
    ):
        super().__init__()
        unknown = set(vision_cfg) - _VISION_KEYS
        if unknown:
            raise ValueError(f"unsupported vision_cfg keys for SimZSS: {sorted(unknown)} (known: {sorted(_VISION_KEYS)})")
        if init_logit_bias is not None:
            raise ValueError("SimZSS uses the CLIP (softmax) loss: init_logit_bias is not supported")
        self.output_dict = output_dict
        self.simzss_variant = check_variant(simzss_variant)
        self.visual = FrozenVisionTower(**vision_cfg)
        if self.visual.width != embed_dim:
            raise ValueError(
                f"embed_dim ({embed_dim}) must equal the vision tower width ({self.visual.width}): "
                "the shared space is the vision tower's space"
            )
        text_cfg = dict(text_cfg, output_tokens=True)  # one pass gives g(EOS) and every token (for Eq. 1)
        self.text = _build_text_tower(embed_dim, text_cfg, quick_gelu, cast_dtype)
        self.context_length = self.text.context_length
        self.vocab_size = self.text.vocab_size
        self.embed_dim = embed_dim
        lshape = [1] if nonscalar_logit_scale else []
        self.logit_scale = nn.Parameter(torch.ones(lshape) * init_logit_scale)
        self.logit_bias = None  # OpenCLIP's load_checkpoint looks for it

    # --- OpenCLIP model interface -------------------------------------------------------------------------
    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False):
        self.visual.lock(unlocked_groups, freeze_bn_stats)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True):
        self.text.lock(unlocked_layers, freeze_layer_norm)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.text.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"text." + n for n in self.text.no_weight_decay()}

    # --- vision side ----------------------------------------------------------------------------------------
    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Global image features ``z̄_v`` [B, d_v] (CLS, or patch mean for "avg" configs)."""
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_dense(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Patch tokens ``z_v`` [B, h, w, d_v] for any input size that is a multiple of the patch size."""
        dense = self.visual.forward_tokens(image)[1]
        return F.normalize(dense, dim=-1) if normalize else dense

    # --- text side ------------------------------------------------------------------------------------------
    def project_text(self, x: torch.Tensor) -> torch.Tensor:
        """``g``: the text projection, a linear map R^{d_t} -> R^{d_v}."""
        proj = self.text.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    @property
    def can_trim_text(self) -> bool:
        """Causal mask, EOS pooling, no appended CLS: the outputs up to a caption's EOS ignore what follows."""
        t = self.text
        return t.attn_mask is not None and t.cls_emb is None and t.pool_type == "argmax" and not t.use_pad_mask

    def _encode_text_both(self, text: torch.Tensor, trim: bool = True,
                          length: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(g(EOS) [B, d_v], tokens after ln_final [B, L', d_t]).

        With a causal mask, running the tower on the first L' = (last EOS position + 1) tokens only gives
        exactly the same outputs up to each caption's EOS: captions are short (COCO ~13 tokens of 77), so this
        cuts the text tower's cost several times. OpenCLIP's TextTransformer always runs all 77 positions.
        ``length`` is L' when the caller knows it on the host (``BatchSizes.text_length``); otherwise it is
        read from ``text``: one host sync on an accelerator.
        """
        t = self.text
        if not (trim and self.can_trim_text):
            return t(text)
        if length is None:
            length = BatchSizes.of(text).text_length
        text = text[:, :length]
        cast_dtype = t.transformer.get_cast_dtype()
        x = t.token_embedding(text).to(cast_dtype) + t.positional_embedding[:length].to(cast_dtype)
        x = t.ln_final(t.transformer(x, attn_mask=t.attn_mask[:length, :length]))
        return self.project_text(text_global_pool(x, text, pool_type="argmax")), x

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``g(EOS)`` [B, d_v], the global text feature."""
        features = self._encode_text_both(text)[0]
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text_tokens(self, text: torch.Tensor) -> torch.Tensor:
        """Every text token after the final norm [B, L, d_t], before ``g`` (for Eq. 1)."""
        return self._encode_text_both(text, trim=False)[1]

    def encode_text_concepts(
            self,
            text_tokens: torch.Tensor,
            concept_image_index: torch.Tensor,
            concept_token_mask: torch.Tensor,
            variant: Optional[str] = None,
            num_pairs: Optional[int] = None,
    ) -> torch.Tensor:
        """Eq. 1-2: the projected text concepts ``c̃_t`` [M, d_v] (``text_concepts``; ``variant`` defaults to
        the model's ``simzss_variant``; ``num_pairs`` is ``BatchSizes.concept_tokens`` if known).

        ``text_tokens`` may be trimmed to L' <= L positions (``_encode_text_both``); concepts lie before EOS.
        A mask wider than the tokens is checked for that (a host sync on an accelerator): ``forward`` passes
        one of the tokens' width, checked on the host by ``BatchSizes.of``.
        """
        length = text_tokens.shape[1]
        if length < concept_token_mask.shape[1]:
            if bool(concept_token_mask[:, length:].any()):
                raise ValueError("a concept lies after its caption's end-of-text token")
            concept_token_mask = concept_token_mask[:, :length]
        return text_concepts(text_tokens, concept_image_index, concept_token_mask, self.project_text,
                             variant or self.simzss_variant, num_pairs)

    # --- training forward -------------------------------------------------------------------------------------
    def forward(
            self,
            image: Optional[torch.Tensor] = None,
            text: Optional[torch.Tensor] = None,
            concept_ids: Optional[torch.Tensor] = None,
            concept_image_index: Optional[torch.Tensor] = None,
            concept_token_mask: Optional[torch.Tensor] = None,
            image_features: Optional[torch.Tensor] = None,
            patch_tokens: Optional[torch.Tensor] = None,
            batch_sizes: Optional[BatchSizes] = None,
    ) -> Dict[str, object]:
        """One training forward. Returns the dict ``SimZSSLoss`` takes.

        Concepts come flat: ``concept_ids`` [M] (bank ids), ``concept_image_index`` [M] (their caption/image in
        this batch) and ``concept_token_mask`` [M, L] (their token positions). Without them only the global
        (LiT) outputs are produced. ``image_features``/``patch_tokens`` may be given instead of ``image`` (the
        frozen tower's outputs do not change, so they can be cached). ``batch_sizes`` (``BatchSizes.of`` the
        CPU batch) makes the step free of host syncs; without it, this forward reads them from the text and
        concept tensors, one host sync on an accelerator. They are passed on to the loss in the output.
        """
        out: Dict[str, torch.Tensor] = {"logit_scale": self.logit_scale.exp()}
        if image is not None:
            image_features, dense = self.visual.forward_tokens(image)
            patch_tokens = dense.flatten(1, 2)
        if image_features is not None:
            out["image_features"] = F.normalize(image_features, dim=-1)
        if text is not None:
            if concept_ids is not None:
                if concept_image_index is None or concept_token_mask is None:
                    raise ValueError("concept_ids need concept_image_index and concept_token_mask")
                if patch_tokens is None:
                    raise ValueError("the concept loss needs the images' patch tokens")
            if batch_sizes is None:
                batch_sizes = BatchSizes.of(text, concept_ids, concept_image_index, concept_token_mask)
            text_features, text_tokens = self._encode_text_both(text, length=batch_sizes.text_length)
            out["text_features"] = F.normalize(text_features, dim=-1)
            out["batch_sizes"] = batch_sizes
            if concept_ids is not None:
                out["patch_tokens"] = patch_tokens
                # BatchSizes.of checked that no concept lies past the trimmed length: cut the mask unchecked.
                mask = concept_token_mask[:, :text_tokens.shape[1]]
                out["text_concepts"] = self.encode_text_concepts(text_tokens, concept_image_index, mask,
                                                                 num_pairs=batch_sizes.concept_tokens)
                out["concept_ids"] = concept_ids
                out["concept_image_index"] = concept_image_index
        return out
