"""Eq. 1-10 against direct hand computations on small tensors."""
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from open_clip_simzss.loss import (
    SimZSSLoss, classify_visual_concepts, concept_classification_loss, concept_classifier, concept_queries, id_rows,
    image_slots, pool_visual_concepts, total_loss,
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


def test_sync_free_rows_and_slots_by_hand():
    """id_rows is torch.unique's inverse; image_slots ranks each concept among its image's (docs/performance.md)."""
    ids = torch.tensor([7, 3, 7, 9, 3, 3])
    rows, is_new = id_rows(ids)
    assert rows.tolist() == torch.unique(ids, return_inverse=True)[1].tolist() == [1, 0, 1, 2, 0, 0]
    assert is_new.tolist() == [True, False, False, True, False, True]  # sorted ids 3 3 3 7 7 9
    order, sorted_image, slot = image_slots(torch.tensor([2, 0, 2, 2, 0]))
    assert order.tolist() == [1, 4, 0, 2, 3] and sorted_image.tolist() == [0, 0, 2, 2, 2]
    assert slot.tolist() == [0, 1, 0, 1, 2]
    h, target = concept_classifier(torch.eye(6), ids, num_classes=3)  # the size given: same rows
    assert target.tolist() == rows.tolist() and torch.equal(h, concept_classifier(torch.eye(6), ids)[0])


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


# --- the "release" variant (the authors' code, docs/method.md): each difference by hand --------------------------
def _release_case():
    """Two images whose patches are the basis vectors e1, e2; three concepts: a = [3, 0] (id 2, image 0),
    b = [0, 4] (id 2, image 1), c = [0, 1] (id 7, image 0). Classifier rows: id 2 -> normalize([3, 4]) =
    [0.6, 0.8], id 7 -> [0, 1]."""
    patches = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    text = torch.tensor([[3.0, 0.0], [0.0, 4.0], [0.0, 1.0]])
    return patches, text, torch.tensor([2, 2, 7]), torch.tensor([0, 1, 0])


def _pooled_by_hand(q, tau):
    """Patches e1, e2: s = softmax(q̂ / τ) and c_v = s (the patches are the basis)."""
    norm = math.hypot(*q)
    e = [math.exp(x / norm / tau) for x in q]
    return [x / sum(e) for x in e]


def _ce_by_hand(visual, rows, temperature, label):
    v = [x / math.hypot(*visual) for x in visual]
    logits = [(v[0] * r[0] + v[1] * r[1]) / temperature for r in rows]
    return math.log(sum(math.exp(x) for x in logits)) - logits[label], logits


def test_release_queries_are_classifier_rows_by_hand():
    patches, text, ids, image = _release_case()
    classifier, target = concept_classifier(text, ids)
    assert torch.allclose(concept_queries(text, classifier, target, "release"),
                          torch.tensor([[0.6, 0.8], [0.6, 0.8], [0.0, 1.0]]))
    assert torch.equal(concept_queries(text, classifier, target, "paper"), text)
    # the whole release loss, by hand: queries [0.6, 0.8] (a, b) and [0, 1] (c), tau = 0.5, T = 0.25
    rows = [[0.6, 0.8], [0.0, 1.0]]
    expected, correct = 0.0, 0
    for q, true_row in (([0.6, 0.8], 0), ([0.6, 0.8], 0), ([0.0, 1.0], 1)):
        visual = _pooled_by_hand(q, 0.5)
        _, logits = _ce_by_hand(visual, rows, 0.25, 0)
        label = max(range(2), key=lambda k: (logits[k], -k))  # argmax, ties to the lowest id
        expected += _ce_by_hand(visual, rows, 0.25, label)[0] / 3
        correct += label == true_row
    loss_fn = SimZSSLoss(lambda_concept=1.0, tau=0.5, concept_temperature=0.25, variant="release")
    loss, accuracy = loss_fn.concept_loss(patches, text, ids, image)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert accuracy.item() == pytest.approx(correct / 3)
    # the paper variant on the same input queries with a = [1, 0], b = [0, 1], c = [0, 1], target = own id
    expected_paper = sum(_ce_by_hand(_pooled_by_hand(q, 0.5), rows, 0.25, row)[0]
                         for q, row in (([3.0, 0.0], 0), ([0.0, 4.0], 0), ([0.0, 1.0], 1))) / 3
    paper, _ = SimZSSLoss(lambda_concept=1.0, tau=0.5, concept_temperature=0.25).concept_loss(patches, text, ids, image)
    assert paper.item() == pytest.approx(expected_paper, rel=1e-6)
    assert abs(paper.item() - loss.item()) > 0.05  # the two variants differ on this input


def test_release_target_is_the_argmax_of_detached_logits_by_hand():
    # concept 0 (true id row 0) looks like row 1: the release target is row 1, the paper's is row 0
    visual = torch.tensor([[0.0, 1.0], [1.0, 0.2]])
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    target = torch.tensor([0, 0])
    loss, accuracy = classify_visual_concepts(visual, rows, target, temperature=0.5, variant="release")
    ce0, _ = _ce_by_hand([0.0, 1.0], [[1, 0], [0, 1]], 0.5, 1)
    ce1, _ = _ce_by_hand([1.0, 0.2], [[1, 0], [0, 1]], 0.5, 0)
    assert loss.item() == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    assert accuracy.item() == 0.5  # mean(argmax == true id): concept 0 is wrong, concept 1 right
    paper, paper_accuracy = classify_visual_concepts(visual, rows, target, temperature=0.5, variant="paper")
    assert paper.item() == pytest.approx((_ce_by_hand([0.0, 1.0], [[1, 0], [0, 1]], 0.5, 0)[0] + ce1) / 2)
    assert paper_accuracy.item() == 0.5
    # the target carries no gradient: the gradient is that of a cross-entropy with the labels fixed
    loss.backward()
    fixed = rows.detach().clone().requires_grad_(True)
    F.cross_entropy(F.normalize(visual, dim=-1) @ fixed.t() / 0.5, torch.tensor([1, 0])).backward()
    assert torch.allclose(rows.grad, fixed.grad)


def test_release_target_ties_go_to_the_lowest_id():
    # a visual concept exactly between rows 0 and 1: the loss is log 2 either way, the gradient tells which
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss, _ = classify_visual_concepts(torch.tensor([[1.0, 1.0]]), rows, torch.tensor([1]), 1.0, "release")
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    v = 1 / math.sqrt(2)
    # d CE / d h_k = (p_k - [k == label]) v / T with p = (1/2, 1/2) and label = row 0 (the lower id)
    assert torch.allclose(rows.grad, torch.tensor([[-0.5 * v, -0.5 * v], [0.5 * v, 0.5 * v]]))


def test_release_softmax_runs_over_the_classes_present_only():
    # ids 3 and 900 of a large bank: two classes, not 901, so one concept's loss is log(1 + e^(Δ/T))
    visual, text = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss_3, _ = concept_classification_loss(visual[[0, 0]], text, torch.tensor([3, 900]), 0.5, variant="release")
    assert loss_3.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant"):
        SimZSSLoss(variant="authors")
    with pytest.raises(ValueError, match="variant"):
        concept_classification_loss(torch.ones(1, 2), torch.ones(1, 2), torch.tensor([0]), variant="x")
