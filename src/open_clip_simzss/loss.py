"""SimZSS losses (paper §3; docs/method.md): ``L = L_g + λ L_l`` (Eq. 10).

* ``L_g`` (Eq. 5-6) is OpenCLIP's ``ClipLoss``, used as is.
* ``L_l`` (Eq. 3-4, 7-9) is the concept loss: each text concept queries the patch tokens of its own image to
  pool a visual concept (``pool_visual_concepts``), which is then classified among the unique concepts of the
  global batch, the classifier being the sum of the batch's text concepts per concept id
  (``concept_classifier``, ``concept_classification_loss``).

Two variants (``variant=``, docs/method.md "Paper vs release"): ``"paper"`` follows the paper's equations;
``"release"`` reproduces the authors' released code (tileb1/simzss), whose published numbers it produced: each
concept queries the patches with its id's classifier row instead of its own vector, and the cross-entropy target
is the argmax of the detached logits instead of the concept's id. (The third difference, how a text concept is
built from its tokens, is in ``model.text_concepts``; ``variants.py`` tabulates all three.)

Distributed training all-gathers the concepts (with gradient for the local ones when ``gather_with_grad``),
so the result equals single-process training on the same global batch, for both variants, exactly as
OpenCLIP's ``ClipLoss``.

Host syncs (docs/performance.md): given the batch's ``BatchSizes`` (``batch.py``; ``SimZSS.forward`` passes
them on), a single-process loss reads nothing back from the device. Without them, the pooling layout and the
classifier size are read from the device (one sync each). Distributed training needs two: the per-rank concept
counts (the sizes of the variable all-gather) and the number of distinct ids of the global batch.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from .batch import id_rows, image_slots
from .validation import check_non_negative, check_positive
from .variants import check_variant


def pool_visual_concepts(
        patch_tokens: torch.Tensor,
        image_index: torch.Tensor,
        text_concepts: torch.Tensor,
        tau: float = 0.1,
        slots: Optional[int] = None,
) -> torch.Tensor:
    """Eq. 3-4: the visual concept of each text concept, pooled from its own image's patches.

    ``s = softmax_over_patches(ẑ_v · ĉ / τ)`` and ``c_v = ẑ_vᵀ s``, with ``ẑ_v`` the l2-normalised patch tokens
    of the concept's image and ``ĉ`` the l2-normalised (projected) text concept.

    Args:
        patch_tokens: [B, N, d] patch tokens (any norm; normalised here).
        image_index: [M] long, the image of each concept.
        text_concepts: [M, d] the queries (any norm; normalised here): the projected text concepts ``c̃_t``,
            or their classifier rows for the release variant (``concept_queries``).
        tau: softmax temperature over patches (Table 9: 0.1).
        slots: the most concepts of one image (``BatchSizes.concepts_per_image``), if known on the host;
            otherwise read from ``image_index`` (a host sync on an accelerator).
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
    order, sorted_image, slot = image_slots(image_index)
    if slots is None:
        slots = int(slot.max()) + 1
    flat_slot = sorted_image * slots + slot  # row of each (sorted) concept in the [B * K, d] layout
    # Advanced indexing / index_put only: index_add_, index_copy and index_select's backward are slow on CPU.
    padded = queries.new_zeros(patches.shape[0] * slots, queries.shape[-1]).index_put((flat_slot,), queries[order])
    padded = padded.view(patches.shape[0], slots, -1)
    weights = torch.softmax(torch.bmm(padded, patches.transpose(1, 2)) / tau, dim=-1)  # [B, K, N]
    pooled = torch.bmm(weights, patches).reshape(-1, queries.shape[-1])[flat_slot]
    return torch.zeros_like(queries).index_put((order,), pooled)


def concept_classifier(text_concepts: torch.Tensor, concept_ids: torch.Tensor,
                       num_classes: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7: one row per unique concept id, ``h_j = Σ_{l: id_l = j} c̃_t^l``, rows l2-normalised.

    Returns (classifier [k, d], target [M]: the row of each concept's own id). Rows are sorted by id, so "the
    lowest id" and "the first row" are the same thing. Only the ids present in the batch have a row: this is
    the release code's restriction of the softmax to the classes present in the batch. ``num_classes`` is k
    (``BatchSizes.concept_classes``) if known on the host; otherwise it is read back (a host sync).
    """
    target, is_new = id_rows(concept_ids)
    if num_classes is None:
        num_classes = int(is_new.sum())
    summed = text_concepts.new_zeros(num_classes, text_concepts.shape[-1]).index_put(
        (target,), text_concepts, accumulate=True)
    return F.normalize(summed, dim=-1), target


def concept_queries(text_concepts: torch.Tensor, classifier: torch.Tensor, target: torch.Tensor,
                    variant: str = "paper") -> torch.Tensor:
    """What each concept queries the patches with (Eq. 3): its own text concept (paper), or its id's
    classifier row, i.e. the normalised sum of the batch's concepts of that id (release)."""
    return text_concepts if check_variant(variant) == "paper" else classifier[target]


def classify_visual_concepts(
        visual_concepts: torch.Tensor,
        classifier: torch.Tensor,
        target: torch.Tensor,
        temperature: float = 0.07,
        variant: str = "paper",
        reduction: str = "mean",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8-9 on a ready classifier: ``logits = normalize(c_v) · hᵀ / T``, cross-entropy.

    The cross-entropy target is the concept's own row ``target`` (paper) or the argmax of the detached logits
    (release; ties go to the first row, the lowest id; the target carries no gradient). Returns (loss,
    accuracy = mean(argmax == own row), detached).
    """
    logits = F.normalize(visual_concepts, dim=-1) @ classifier.t() / temperature
    predicted = logits.detach().argmax(dim=-1)  # torch.argmax returns the first maximum
    labels = target if check_variant(variant) == "paper" else predicted
    loss = F.cross_entropy(logits, labels, reduction=reduction)
    accuracy = (predicted == target).float().mean() if target.numel() else logits.new_zeros(())
    return loss, accuracy.detach()


def concept_classification_loss(
        visual_concepts: torch.Tensor,
        text_concepts: torch.Tensor,
        concept_ids: torch.Tensor,
        temperature: float = 0.07,
        reduction: str = "mean",
        variant: str = "paper",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7-9: classify each visual concept among the batch's unique concepts (``classify_visual_concepts``).

    ``p = softmax_k(normalize(c_v) · hᵀ / T)``. The paper prints no temperature; the authors' code uses a fixed
    T = 0.07 (docs/method.md). ``variant`` chooses the cross-entropy target (the true id, or the release code's
    argmax of the detached logits); the visual concepts must have been pooled with that variant's queries.

    Returns (loss, accuracy). With no concept the loss is a finite zero that still carries a graph.
    """
    check_variant(variant)
    if concept_ids.shape[0] == 0:
        zero = visual_concepts.sum() * 0.0 + text_concepts.sum() * 0.0
        return zero, zero.detach()
    classifier, target = concept_classifier(text_concepts, concept_ids)
    return classify_visual_concepts(visual_concepts, classifier, target, temperature, variant, reduction)


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

    ``variant`` is ``"paper"`` or ``"release"`` (module docstring, docs/method.md); the model's text concepts
    must be built with the same variant (``SimZSS(simzss_variant=...)``; ``python -m training.main
    --simzss-variant`` sets both).

    Distributed (``world_size > 1``, torch.distributed): text concepts and ids are all-gathered first (the
    classifier, and the release variant's queries, need the whole global batch), visual concepts are pooled
    locally (each needs its own image) and then gathered. With ``local_loss=False`` every rank computes the loss
    of the whole global batch; with ``local_loss=True`` a rank classifies its own visual concepts only,
    weighted so that the mean over ranks is the global loss. Either way, with ``gather_with_grad=True`` the
    DDP-averaged gradients equal those of one process holding the whole batch, for both variants. (The
    authors' multi-GPU code is not equal to one process: docs/method.md.)
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
            variant: str = "paper",
    ):
        super().__init__()
        lambda_concept = check_non_negative("lambda_concept", lambda_concept)
        tau = check_positive("tau", tau)
        concept_temperature = check_positive("concept_temperature", concept_temperature)
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
        self.variant = check_variant(variant)

    def concept_loss(
            self,
            patch_tokens: torch.Tensor,
            text_concepts: torch.Tensor,
            concept_ids: torch.Tensor,
            concept_image_index: torch.Tensor,
            batch_sizes=None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``L_l`` (Eq. 3-4, 7-9) over the global batch; returns (loss, accuracy).

        ``batch_sizes`` (``batch.BatchSizes`` of the local batch) spares the host syncs of the pooling layout
        and, in a single process, of the classifier size. Eq. 3-9 run in fp32 even under autocast: the cosines
        are divided by τ = 0.1 and T = 0.07 before their softmax, which would magnify bf16's rounding (~0.4 %)
        tenfold, and these operations are a small share of the step (docs/performance.md).
        """
        with torch.autocast(patch_tokens.device.type, enabled=False):
            return self._concept_loss(patch_tokens.float(), text_concepts.float(), concept_ids,
                                      concept_image_index, batch_sizes)

    def _concept_loss(self, patch_tokens, text_concepts, concept_ids, concept_image_index, batch_sizes):
        counts = [concept_ids.shape[0]]
        all_text, all_ids = text_concepts, concept_ids
        if self.world_size > 1:
            # torch.full, not torch.tensor([n], device=...): a blocking host-to-device copy is a sync too.
            local_count = torch.full((1,), concept_ids.shape[0], device=concept_ids.device)
            gathered = [torch.zeros_like(local_count) for _ in range(self.world_size)]
            dist.all_gather(gathered, local_count)
            # Host sync (needed): the padded all-gathers below are sized by every rank's count.
            counts = torch.cat(gathered).tolist()
            all_text = _all_gather_variable(text_concepts, counts, self.rank, self.gather_with_grad)
            all_ids = _all_gather_variable(concept_ids, counts, self.rank, with_grad=False)
        total = sum(counts)
        if total == 0:
            zero = patch_tokens.sum() * 0.0 + all_text.sum() * 0.0
            return zero, zero.detach()

        # Host sync when distributed (needed): the classifier has one row per distinct id of the global batch,
        # which no rank knows before the gather. In a single process the batch's BatchSizes know it.
        num_classes = batch_sizes.concept_classes if batch_sizes is not None and self.world_size == 1 else None
        slots = batch_sizes.concepts_per_image if batch_sizes is not None else None
        classifier, target = concept_classifier(all_text, all_ids, num_classes)
        rank = self.rank if self.world_size > 1 else 0
        start = sum(counts[:rank])
        local_target = target[start: start + counts[rank]]
        queries = concept_queries(text_concepts, classifier, local_target, self.variant)
        # Visual concepts need the concept's own image, which is local: pool before gathering.
        visual_concepts = pool_visual_concepts(patch_tokens, concept_image_index, queries, self.tau, slots)
        if self.world_size == 1 or not self.local_loss:
            if self.world_size > 1:
                visual_concepts = _all_gather_variable(visual_concepts, counts, self.rank, self.gather_with_grad)
            return classify_visual_concepts(visual_concepts, classifier, target, self.concept_temperature,
                                            self.variant)

        # Local loss: this rank's visual concepts against the global classifier. Summed CE / global count,
        # times world_size, so that the mean over ranks (what DDP averages) is the global mean.
        loss, accuracy = classify_visual_concepts(visual_concepts, classifier, local_target,
                                                  self.concept_temperature, self.variant, reduction="sum")
        loss = loss * (self.world_size / total)
        if counts[rank] == 0:
            loss = loss + visual_concepts.sum() * 0.0  # keep the graph connected on a rank without concepts
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
            batch_sizes=None,
            output_dict: bool = True,
            **unused,
    ):
        contrastive = self.clip_loss(image_features, text_features, logit_scale)
        losses: Dict[str, torch.Tensor] = {"contrastive_loss": contrastive}
        if self.lambda_concept > 0:
            if text_concepts is None or concept_ids is None or patch_tokens is None or concept_image_index is None:
                raise ValueError("lambda_concept > 0 needs the model's concept outputs (pass concepts to the model)")
            concept, accuracy = self.concept_loss(patch_tokens, text_concepts, concept_ids, concept_image_index,
                                                  batch_sizes)
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
