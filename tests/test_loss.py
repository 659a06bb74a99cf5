"""Eq. 1-10 against direct hand computations on small tensors."""
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from open_clip_simzss.loss import (
    SimZSSLoss, concept_classification_loss, concept_classifier, pool_visual_concepts, total_loss,
)
from open_clip_simzss.model import pool_text_concepts


def reference_visual_concepts(patch_tokens, image_index, text_concepts, tau):
    """Eq. 3-4 written one concept at a time."""
    out = []
    for m in range(image_index.shape[0]):
        z = F.normalize(patch_tokens[image_index[m]], dim=-1)  # [N, d]
        c = F.normalize(text_concepts[m], dim=-1)
        s = torch.softmax(z @ c / tau, dim=0)
        out.append(z.t() @ s)
    return torch.stack(out)


def test_visual_concept_by_hand():
    # two orthogonal patches, a query equal to the first: s = softmax([1, 0] / 0.1)
    patches = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])
    query = torch.tensor([[5.0, 0.0]])
    cv = pool_visual_concepts(patches, torch.tensor([0]), query, tau=0.1)
    s0 = math.exp(10) / (math.exp(10) + 1)
    assert torch.allclose(cv, torch.tensor([[s0, 1 - s0]]), atol=1e-6)


def test_visual_concepts_match_per_concept_loop():
    torch.manual_seed(0)
    patches = torch.randn(3, 5, 4)
    image_index = torch.tensor([2, 0, 2, 2, 1, 0])  # unsorted, several per image, image 1 once
    text = torch.randn(6, 4)
    for tau in (0.1, 1.0):
        got = pool_visual_concepts(patches, image_index, text, tau)
        assert torch.allclose(got, reference_visual_concepts(patches, image_index, text, tau), atol=1e-6)


def test_visual_concepts_only_see_their_own_image():
    torch.manual_seed(0)
    patches = torch.randn(2, 4, 3)
    text = torch.randn(1, 3)
    before = pool_visual_concepts(patches, torch.tensor([0]), text, 0.1)
    patches[1] = torch.randn(4, 3) * 100
    assert torch.equal(before, pool_visual_concepts(patches, torch.tensor([0]), text, 0.1))


def test_text_concept_is_mean_of_its_tokens():
    tokens = torch.arange(2 * 4 * 2, dtype=torch.float).reshape(2, 4, 2)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, [1, 2]] = True  # concept 0: caption 1, tokens 1-2
    mask[1, 3] = True       # concept 1: caption 0, token 3
    got = pool_text_concepts(tokens, torch.tensor([1, 0]), mask)
    expected = torch.stack([(tokens[1, 1] + tokens[1, 2]) / 2, tokens[0, 3]])
    assert torch.equal(got, expected)


def test_text_concept_without_tokens_is_refused():
    with pytest.raises(ValueError, match="at least one token"):
        pool_text_concepts(torch.zeros(1, 4, 2), torch.tensor([0]), torch.zeros(1, 4, dtype=torch.bool))


def test_classifier_sums_concepts_of_one_id():
    text = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    h, target = concept_classifier(text, torch.tensor([7, 3, 7]))
    # unique ids sorted: 3 -> row 0, 7 -> row 1; row 1 = normalize([1,0] + [3,4]) = [4,4]/sqrt(32)
    assert target.tolist() == [1, 0, 1]
    assert torch.allclose(h, torch.tensor([[0.0, 1.0], [1 / math.sqrt(2), 1 / math.sqrt(2)]]))


def test_concept_loss_by_hand():
    visual = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    text = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    loss, acc = concept_classification_loss(visual, text, torch.tensor([0, 1]), temperature=0.5)
    # concept 0: logits [1, 0]/0.5 -> CE = -log(e^2 / (e^2 + 1))
    # concept 1: normalize([1,1]) -> logits [0.7071, 0.7071]/0.5 -> CE = log 2
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert loss.item() == pytest.approx((ce0 + math.log(2)) / 2, rel=1e-6)
    # concept 1 is a tie: argmax picks row 0, so accuracy is 1/2
    assert acc.item() == pytest.approx(0.5)


def test_one_unique_concept_gives_zero_loss():
    torch.manual_seed(0)
    loss, acc = concept_classification_loss(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([5, 5, 5]))
    assert loss.item() == pytest.approx(0.0, abs=1e-7) and acc.item() == 1.0


def test_no_concepts_gives_finite_zero_with_graph():
    text = torch.randn(0, 4, requires_grad=True)
    loss, _ = concept_classification_loss(torch.randn(0, 4), text, torch.zeros(0, dtype=torch.long))
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()


def _outputs(batch=4, dim=6, concepts=((0, 1), (0, 2), (1, 1), (3, 4))):
    torch.manual_seed(1)
    image_index = torch.tensor([c[0] for c in concepts], dtype=torch.long)
    return dict(
        image_features=F.normalize(torch.randn(batch, dim), dim=-1),
        text_features=F.normalize(torch.randn(batch, dim), dim=-1),
        logit_scale=torch.tensor(10.0),
        patch_tokens=torch.randn(batch, 9, dim),
        text_concepts=torch.randn(len(concepts), dim),
        concept_ids=torch.tensor([c[1] for c in concepts], dtype=torch.long),
        concept_image_index=image_index,
    )


def test_lambda_zero_is_exactly_clip_loss():
    out = _outputs()
    losses = SimZSSLoss(lambda_concept=0.0)(**out)
    clip = ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"])
    assert torch.equal(total_loss(losses), clip)
    assert losses["concept_loss"].item() == 0.0


def test_total_is_global_plus_lambda_concept():
    out = _outputs()
    losses = SimZSSLoss(lambda_concept=0.05, tau=0.1, concept_temperature=0.07)(**out)
    clip = ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"])
    visual = reference_visual_concepts(out["patch_tokens"], out["concept_image_index"], out["text_concepts"], 0.1)
    concept, _ = concept_classification_loss(visual, out["text_concepts"], out["concept_ids"], 0.07)
    assert torch.allclose(total_loss(losses), clip + 0.05 * concept, atol=1e-6)
    assert SimZSSLoss(lambda_concept=0.05)(**out, output_dict=False).item() == pytest.approx(total_loss(losses).item())


def test_batch_without_concepts_is_finite():
    out = _outputs(concepts=())
    losses = SimZSSLoss(lambda_concept=0.05)(**out)
    assert torch.isfinite(total_loss(losses))
    assert losses["concept_loss"].item() == 0.0


def test_missing_concept_outputs_is_a_clear_error():
    out = _outputs()
    del out["text_concepts"]
    with pytest.raises(ValueError, match="concept outputs"):
        SimZSSLoss(lambda_concept=0.05)(**out)


@pytest.mark.parametrize("kwargs", [dict(lambda_concept=-1), dict(tau=0), dict(concept_temperature=0)])
def test_bad_hyperparameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        SimZSSLoss(**kwargs)
