"""SimZSS losses (paper §3, SPEC §3): ``L = L_g + λ L_l`` (Eq. 10).

* ``L_g`` (Eq. 5-6) is OpenCLIP's ``ClipLoss``, used as is.
* ``L_l`` (Eq. 3-4, 7-9) is the concept loss: each text concept queries the patch tokens of its own image to
  pool a visual concept (``pool_visual_concepts``), which is then classified among the unique concepts of the
  global batch, the classifier being the sum of the batch's text concepts per concept id
  (``concept_classification_loss``).

Distributed training all-gathers the concepts (with gradient for the local ones when ``gather_with_grad``),
so the result equals single-process training on the same global batch, exactly as OpenCLIP's ``ClipLoss``.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from open_clip.loss import ClipLoss


def pool_visual_concepts(
        patch_tokens: torch.Tensor,
        image_index: torch.Tensor,
        text_concepts: torch.Tensor,
        tau: float = 0.1,
) -> torch.Tensor:
    """Eq. 3-4: the visual concept of each text concept, pooled from its own image's patches.

    ``s = softmax_over_patches(ẑ_v · ĉ / τ)`` and ``c_v = ẑ_vᵀ s``, with ``ẑ_v`` the l2-normalised patch tokens
    of the concept's image and ``ĉ`` the l2-normalised (projected) text concept.

    Args:
        patch_tokens: [B, N, d] patch tokens (any norm; normalised here).
        image_index: [M] long, the image of each concept.
        text_concepts: [M, d] projected text concepts ``c̃_t``.
        tau: softmax temperature over patches (Table 9: 0.1).
    Returns:
        [M, d] visual concepts ``c_v`` (not normalised).
    """
    if patch_tokens.ndim != 3:
        raise ValueError(f"patch_tokens must be [B, N, d], got {tuple(patch_tokens.shape)}")
    num_concepts = image_index.shape[0]
    if num_concepts == 0:
        return text_concepts.new_zeros(0, patch_tokens.shape[-1])
    patches = F.normalize(patch_tokens, dim=-1).to(text_concepts.dtype)
    queries = F.normalize(text_concepts, dim=-1)
    # Lay the concepts out as [B, K, d] (K = most concepts of one image) so that each concept only meets its
    # own image's patches: gathering patches per concept would cost M x N x d memory.
    counts = torch.bincount(image_index, minlength=patches.shape[0])
    slots = int(counts.max())
    order = torch.argsort(image_index, stable=True)
    sorted_image = image_index[order]
    first_of_image = torch.cumsum(counts, 0) - counts
    slot = torch.arange(num_concepts, device=image_index.device) - first_of_image[sorted_image]
    flat_slot = sorted_image * slots + slot  # row of each (sorted) concept in the [B * K, d] layout
    # Advanced indexing / index_put only: index_add_, index_copy and index_select's backward are slow on CPU.
    padded = queries.new_zeros(patches.shape[0] * slots, queries.shape[-1]).index_put((flat_slot,), queries[order])
    padded = padded.view(patches.shape[0], slots, -1)
    weights = torch.softmax(torch.bmm(padded, patches.transpose(1, 2)) / tau, dim=-1)  # [B, K, N]
    pooled = torch.bmm(weights, patches).reshape(-1, queries.shape[-1])[flat_slot]
    return torch.zeros_like(queries).index_put((order,), pooled)


def concept_classifier(text_concepts: torch.Tensor, concept_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7: one row per unique concept id, ``h_j = Σ_{l: id_l = j} c̃_t^l``, rows l2-normalised.

    Returns (classifier [k, d], target [M]: the row of each concept's own id).
    """
    unique_ids, target = torch.unique(concept_ids, return_inverse=True)
    summed = text_concepts.new_zeros(unique_ids.shape[0], text_concepts.shape[-1]).index_put(
        (target,), text_concepts, accumulate=True)
    return F.normalize(summed, dim=-1), target


def concept_classification_loss(
        visual_concepts: torch.Tensor,
        text_concepts: torch.Tensor,
        concept_ids: torch.Tensor,
        temperature: float = 0.07,
        reduction: str = "mean",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7-9: classify each visual concept among the batch's unique concepts; cross-entropy on its own id.

    ``p = softmax_k(normalize(c_v) · hᵀ / T)``. The paper prints no temperature; the reference code uses a
    fixed T = 0.07 (SPEC §3). The target is the concept's true id (not the argmax of detached logits).

    Returns (loss, accuracy). With no concept the loss is a finite zero that still carries a graph.
    """
    if concept_ids.shape[0] == 0:
        zero = visual_concepts.sum() * 0.0 + text_concepts.sum() * 0.0
        return zero, zero.detach()
    classifier, target = concept_classifier(text_concepts, concept_ids)
    logits = F.normalize(visual_concepts, dim=-1) @ classifier.t() / temperature
    loss = F.cross_entropy(logits, target, reduction=reduction)
    accuracy = (logits.argmax(dim=-1) == target).float().mean().detach()
    return loss, accuracy


def _all_gather_variable(tensor: torch.Tensor, counts: list, rank: int, with_grad: bool) -> torch.Tensor:
    """All-gather tensors whose first dimension differs per rank (padded to the largest, then trimmed).

    With ``with_grad`` gradients flow back to every rank's piece (``torch.distributed.nn.all_gather``);
    without, the local piece is put back in place so that its gradient is kept (OpenCLIP's convention).
    """
    padded = tensor.new_zeros((max(counts),) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    if with_grad:
        pieces = list(torch.distributed.nn.all_gather(padded))
    else:
        pieces = [torch.zeros_like(padded) for _ in counts]
        dist.all_gather(pieces, padded)
        pieces[rank] = padded
    return torch.cat([p[:n] for p, n in zip(pieces, counts)], dim=0)


class SimZSSLoss(nn.Module):
    """``L = L_g + λ L_l`` (Eq. 10); ``lambda_concept=0`` is exactly OpenCLIP's ``ClipLoss`` (LiT).

    Call with the dict ``SimZSS.forward`` returns. Returns a dict with ``contrastive_loss`` and
    ``concept_loss`` (already multiplied by λ; their sum is the training loss) and ``concept_accuracy`` (for
    logging, detached). Use ``total_loss(losses)`` to sum the losses.

    Distributed (``world_size > 1``, torch.distributed): text concepts, ids and visual concepts are
    all-gathered. With ``local_loss=False`` every rank computes the loss of the whole global batch; with
    ``local_loss=True`` a rank classifies its own visual concepts only, weighted so that the mean over ranks
    is the global loss. Either way, with ``gather_with_grad=True`` the DDP-averaged gradients equal those of
    one process holding the whole batch.
    """

    def __init__(
            self,
            lambda_concept: float = 0.05,
            tau: float = 0.1,
            concept_temperature: float = 0.07,
            local_loss: bool = False,
            gather_with_grad: bool = False,
            cache_labels: bool = True,
            rank: int = 0,
            world_size: int = 1,
            use_horovod: bool = False,
    ):
        super().__init__()
        if lambda_concept < 0 or tau <= 0 or concept_temperature <= 0:
            raise ValueError("need lambda_concept >= 0, tau > 0 and concept_temperature > 0")
        if use_horovod and lambda_concept > 0:
            raise ValueError("the concept loss gathers with torch.distributed; use --lambda-concept 0 with --horovod")
        self.clip_loss = ClipLoss(
            local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=cache_labels,
            rank=rank, world_size=world_size, use_horovod=use_horovod,
        )
        self.lambda_concept = lambda_concept
        self.tau = tau
        self.concept_temperature = concept_temperature
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.rank = rank
        self.world_size = world_size

    def concept_loss(
            self,
            patch_tokens: torch.Tensor,
            text_concepts: torch.Tensor,
            concept_ids: torch.Tensor,
            concept_image_index: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``L_l`` (Eq. 3-4, 7-9) over the global batch; returns (loss, accuracy)."""
        # Visual concepts need the concept's own image, which is local: pool before gathering.
        visual_concepts = pool_visual_concepts(patch_tokens, concept_image_index, text_concepts, self.tau)
        if self.world_size == 1:
            return concept_classification_loss(visual_concepts, text_concepts, concept_ids, self.concept_temperature)

        local_count = torch.tensor([concept_ids.shape[0]], device=concept_ids.device)
        counts = [torch.zeros_like(local_count) for _ in range(self.world_size)]
        dist.all_gather(counts, local_count)
        counts = [int(c) for c in counts]
        total = sum(counts)
        all_text = _all_gather_variable(text_concepts, counts, self.rank, self.gather_with_grad)
        all_ids = _all_gather_variable(concept_ids, counts, self.rank, with_grad=False)
        if total == 0:
            return concept_classification_loss(visual_concepts, all_text, all_ids, self.concept_temperature)
        if not self.local_loss:
            all_visual = _all_gather_variable(visual_concepts, counts, self.rank, self.gather_with_grad)
            return concept_classification_loss(all_visual, all_text, all_ids, self.concept_temperature)

        # Local loss: this rank's visual concepts against the global classifier. Summed CE / global count,
        # times world_size, so that the mean over ranks (what DDP averages) is the global mean.
        classifier, target = concept_classifier(all_text, all_ids)
        start = sum(counts[: self.rank])
        local_target = target[start: start + counts[self.rank]]
        logits = F.normalize(visual_concepts, dim=-1) @ classifier.t() / self.concept_temperature
        loss = F.cross_entropy(logits, local_target, reduction="sum") * (self.world_size / total)
        if counts[self.rank] == 0:
            loss = loss + visual_concepts.sum() * 0.0  # keep the graph connected on a rank without concepts
        accuracy = (logits.argmax(-1) == local_target).float().mean().detach() if counts[self.rank] else loss.detach() * 0
        return loss, accuracy

    def forward(
            self,
            image_features: torch.Tensor,
            text_features: torch.Tensor,
            logit_scale: torch.Tensor,
            patch_tokens: Optional[torch.Tensor] = None,
            text_concepts: Optional[torch.Tensor] = None,
            concept_ids: Optional[torch.Tensor] = None,
            concept_image_index: Optional[torch.Tensor] = None,
            output_dict: bool = True,
            **unused,
    ):
        contrastive = self.clip_loss(image_features, text_features, logit_scale)
        losses: Dict[str, torch.Tensor] = {"contrastive_loss": contrastive}
        if self.lambda_concept > 0:
            if text_concepts is None or concept_ids is None or patch_tokens is None or concept_image_index is None:
                raise ValueError("lambda_concept > 0 needs the model's concept outputs (pass concepts to the model)")
            concept, accuracy = self.concept_loss(patch_tokens, text_concepts, concept_ids, concept_image_index)
            losses["concept_loss"] = self.lambda_concept * concept
            losses["concept_accuracy"] = accuracy
        else:
            zero = contrastive.detach() * 0.0
            losses["concept_loss"] = zero
            losses["concept_accuracy"] = zero
        return losses if output_dict else total_loss(losses)


def total_loss(losses: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the named losses (the keys ending in ``_loss``), i.e. Eq. 10."""
    return sum(v for k, v in losses.items() if k.endswith("_loss"))
