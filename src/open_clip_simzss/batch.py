"""A training batch's concepts: their flat layout, the index maps the model and the loss both read from it, and
the sizes the step's tensor shapes depend on, read once on the host.

Concepts come flat, whatever the number per caption: ``concept_ids`` [M] (bank ids), ``concept_image_index``
[M] (the caption, hence the image, of each concept in the batch) and ``concept_token_mask`` [M, L] (the token
positions of each concept). ``image_slots`` lays them out per image (the visual-concept pooling of Eq. 3-4),
``id_rows`` per distinct id (the classifier of Eq. 7); :class:`BatchSizes` holds the sizes both need so that a
single-process step reads nothing back from the device (docs/performance.md).
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch


def image_slots(image_index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(order, sorted image, slot): the concepts sorted by image (stable), and each one's rank among its
    image's concepts. No host sync (``torch.bincount`` would size its output from the largest index: one)."""
    order = torch.argsort(image_index, stable=True)
    sorted_image = image_index[order]
    first_of_image = torch.searchsorted(sorted_image, sorted_image)  # where each concept's image starts
    return order, sorted_image, torch.arange(image_index.shape[0], device=image_index.device) - first_of_image


def id_rows(concept_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(row of each concept's id among the batch's distinct ids in increasing order [M], whether each id of
    the sorted ids is a new one [M]): ``torch.unique(return_inverse=True)`` without its host sync."""
    sorted_ids, order = torch.sort(concept_ids, stable=True)
    is_new = torch.ones_like(sorted_ids, dtype=torch.bool)
    is_new[1:] = sorted_ids[1:] != sorted_ids[:-1]
    sorted_row = torch.cumsum(is_new, dim=0) - 1  # the number of distinct smaller ids
    return torch.empty_like(sorted_row).index_put((order,), sorted_row), is_new



@dataclass(frozen=True)
class BatchSizes:
    """The sizes a training batch's tensor shapes depend on, read once on the host (docs/performance.md).

    On an accelerator, reading a number out of a device tensor (``int(t)``, ``.item()``, ``nonzero``,
    ``unique``) stalls the host until the device has run everything queued before it: a host-device sync.
    Computed from the loader's CPU batch (``training.data.Batcher`` does it in the loader workers), these sizes let
    ``SimZSS.forward`` and ``SimZSSLoss`` run a single-process step with no sync at all. Without them, both
    compute what they need from the device tensors, with syncs (``SimZSS.forward``: one).
    """
    text_length: int  # positions the text tower runs: up to the batch's last end-of-text token (trimming)
    concept_tokens: int = 0  # set entries of concept_token_mask: the (concept, token) pairs of Eq. 1
    concepts_per_image: int = 0  # most concepts of one image: the slots of pool_visual_concepts' layout
    concept_classes: int = 0  # distinct concept ids: the rows of the concept classifier (Eq. 7)

    @classmethod
    def of(
            cls,
            text: torch.Tensor,
            concept_ids: Optional[torch.Tensor] = None,
            concept_image_index: Optional[torch.Tensor] = None,
            concept_token_mask: Optional[torch.Tensor] = None,
    ) -> "BatchSizes":
        """The sizes of a batch, checked: every concept has a token and none lies after the last end-of-text
        token. One read of one small tensor: free on CPU tensors, one host sync on device tensors."""
        eos = text.argmax(dim=-1)  # the end-of-text token has the largest id (OpenCLIP's argmax pooling)
        stats = [eos.max() + 1]
        num_concepts = 0 if concept_ids is None else concept_ids.shape[0]
        if num_concepts:
            if not (concept_token_mask.shape[0] == concept_image_index.shape[0] == num_concepts):
                raise ValueError("concept_ids, concept_image_index and concept_token_mask disagree on the number "
                                 "of concepts")
            tokens = concept_token_mask.sum(dim=1)
            positions = torch.arange(concept_token_mask.shape[1], device=text.device)
            last_position = torch.where(concept_token_mask.any(dim=0), positions, -1).max()
            slots = image_slots(concept_image_index)[2].max() + 1
            stats += [tokens.sum(), tokens.min(), last_position, slots, id_rows(concept_ids)[1].sum()]
        values = torch.stack(stats).tolist()
        if not num_concepts:
            return cls(values[0])
        text_length, concept_tokens, fewest_tokens, last_position, concepts_per_image, concept_classes = values
        if fewest_tokens == 0:
            raise ValueError("every concept needs at least one token position")
        if last_position >= text_length:
            raise ValueError("a concept lies after its caption's end-of-text token")
        return cls(text_length, concept_tokens, concepts_per_image, concept_classes)


