"""The SimZSS model: configs, shapes, a frozen tower for real, weights from local files, OpenCLIP interop."""
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import open_clip_simzss
from open_clip_simzss.loss import SimZSSLoss, total_loss

ALL_MODELS = open_clip_simzss.list_models()


def test_configs_are_registered_with_open_clip():
    assert set(ALL_MODELS) >= {
        "simzss-vits14", "simzss-vitb14", "simzss-vitl14", "simzss-vits14-noreg", "simzss-vitb14-noreg",
        "simzss-vitl14-noreg", "simzss-vitb16-augreg", "simzss-tiny", "simzss-vitb14-dvt",
    }
    assert set(ALL_MODELS) <= set(open_clip.list_models())
    assert open_clip.get_tokenizer("simzss-vitb14").context_length == 77


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_config_builds_and_gives_dense_tokens_at_224_and_448(name):
    torch.manual_seed(0)
    cfg = open_clip.get_model_config(name)
    # a DVT denoiser needs its released weights (tests/test_denoiser.py); for shapes, random ones will do
    random_denoiser = dict(load_weights=False) if "denoiser_cfg" in cfg["vision_cfg"] else {}
    # Shapes only: built and run on the meta device (no memory, no arithmetic: initialising a ViT-L takes seconds
    # and its forward at 448 ~15 s on 2 cores). The same code runs with real numbers in the simzss-tiny tests.
    with torch.device("meta"):
        model, _, preprocess = open_clip_simzss.create_model_and_transforms(name, device="meta", **random_denoiser)
    dim = cfg["embed_dim"]
    patch = model.visual.patch_size
    assert model.encode_text(open_clip.get_tokenizer(name)(["a photo"])).shape == (1, dim)
    for size in (224, 448):
        dense = model.encode_dense(torch.randn(1, 3, size, size, device="meta"))
        assert dense.shape == (1, size // patch, size // patch, dim)
    # the tower's own statistics, not CLIP's
    mean = open_clip.get_model_preprocess_cfg(model)["mean"]
    assert tuple(mean) == tuple(model.visual.trunk.pretrained_cfg["mean"])
    if "dinov2" in cfg["vision_cfg"]["timm_model_name"]:
        assert tuple(mean) == (0.485, 0.456, 0.406)


def test_global_token_is_cls_or_patch_mean(tiny_model):
    x = torch.randn(2, 3, 112, 112)
    tokens = tiny_model.visual.trunk.forward_features(x)
    prefix = tiny_model.visual.num_prefix_tokens
    assert tiny_model.visual.pool == "avg"
    assert torch.allclose(tiny_model.encode_image(x), tokens[:, prefix:].mean(1), atol=1e-6)
    assert torch.allclose(tiny_model.encode_dense(x).flatten(1, 2), tokens[:, prefix:], atol=1e-6)
    tiny_model.visual.pool = "token"
    try:
        assert torch.allclose(tiny_model.encode_image(x), tokens[:, 0], atol=1e-6)
    finally:
        tiny_model.visual.pool = "avg"


def test_encode_text_is_projection_of_eos_token(tiny_model, tokenizer):
    text = tokenizer(["a red bus", "two tennis rackets on a court"])
    tokens = tiny_model.encode_text_tokens(text)
    eos = text.argmax(dim=-1)  # the EOS id is the largest in OpenCLIP's vocabulary
    expected = tiny_model.project_text(tokens[torch.arange(2), eos])
    assert torch.allclose(tiny_model.encode_text(text), expected, atol=1e-6)


def test_image_size_not_multiple_of_patch_is_refused(tiny_model):
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny_model.encode_dense(torch.randn(1, 3, 100, 100))


def _batch(tokenizer, batch=4):
    text = tokenizer(["a cat on a mat", "a dog", "a red bus near a tree", "nothing here"][:batch])
    mask = torch.zeros(3, text.shape[1], dtype=torch.bool)
    mask[0, 2] = True
    mask[1, 2] = True
    mask[2, [3, 4]] = True
    return dict(
        image=torch.randn(batch, 3, 112, 112), text=text,
        concept_ids=torch.tensor([0, 1, 2]), concept_image_index=torch.tensor([0, 1, 2]), concept_token_mask=mask,
    )


def test_tower_is_frozen_for_real(tokenizer):
    torch.manual_seed(0)
    model = open_clip_simzss.create_model("simzss-tiny")
    model.train()
    assert not model.visual.training and not any(m.training for m in model.visual.modules())
    assert model.text.training
    assert not any(p.requires_grad for p in model.visual.parameters())
    out = model(**_batch(tokenizer))
    assert out["patch_tokens"].grad_fn is None and out["image_features"].grad_fn is None
    total_loss(SimZSSLoss(lambda_concept=0.5)(**out)).backward()
    assert all(p.grad is None for p in model.visual.parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(not n.startswith("visual.") for n in trainable)
    assert all(model.get_parameter(n).grad is not None for n in trainable)
    assert model.text.text_projection.grad.abs().sum() > 0  # g is trained
    with pytest.raises(ValueError, match="frozen"):
        model.lock_image_tower(unlocked_groups=1)


def test_concept_loss_reaches_text_tower_through_concepts(tokenizer):
    torch.manual_seed(0)
    model = open_clip_simzss.create_model("simzss-tiny")
    out = model(**_batch(tokenizer))
    SimZSSLoss(lambda_concept=1.0)(**out)["concept_loss"].backward()
    grad = model.text.token_embedding.weight.grad
    # the concept tokens of caption 0 ("cat") receive gradient from L_l alone
    cat = tokenizer(["a cat on a mat"])[0, 2]
    assert grad[cat].abs().sum() > 0


def test_vision_weights_from_a_local_file(tmp_path, monkeypatch):
    torch.manual_seed(123)
    donor = open_clip_simzss.create_model("simzss-tiny")
    path = tmp_path / "tower.safetensors"
    save_file({k: v.contiguous() for k, v in donor.visual.trunk.state_dict().items()}, str(path))
    torch.manual_seed(0)
    random = open_clip_simzss.create_model("simzss-tiny")
    assert not torch.equal(random.visual.trunk.pos_embed, donor.visual.trunk.pos_embed)
    loaded = open_clip_simzss.create_model("simzss-tiny", pretrained_image=True, pretrained_image_path=str(path))
    for k, v in donor.visual.trunk.state_dict().items():
        assert torch.equal(loaded.visual.trunk.state_dict()[k], v), k
    monkeypatch.setenv("SIMZSS_VISION_WEIGHTS", str(path))
    from_env = open_clip_simzss.create_model("simzss-tiny")
    assert torch.equal(from_env.visual.trunk.pos_embed, donor.visual.trunk.pos_embed)
    with pytest.raises(FileNotFoundError, match="vision tower weights"):
        open_clip_simzss.create_model("simzss-tiny", pretrained_image_path=str(tmp_path / "missing.pt"))


def test_checkpoint_round_trip(tmp_path, tiny_model, tokenizer):
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in tiny_model.state_dict().items()}}, path)
    torch.manual_seed(99)
    loaded = open_clip_simzss.create_model("simzss-tiny", pretrained=str(path))
    x, text = torch.randn(1, 3, 112, 112), tokenizer(["a cat"])
    assert torch.equal(loaded.encode_dense(x), tiny_model.encode_dense(x))
    assert torch.equal(loaded.encode_text(text), tiny_model.encode_text(text))
    with pytest.raises(FileNotFoundError):
        open_clip_simzss.create_model("simzss-tiny", pretrained=str(tmp_path / "nope.pt"))


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown SimZSS model 'ViT-B-32'"):
        open_clip_simzss.create_model("ViT-B-32")


@pytest.mark.slow
def test_checkpoint_loads_into_plain_open_clip(tmp_path, tokenizer):
    """Token-pooled configs share OpenCLIP's CustomTextCLIP + TimmModel layout: global features agree."""
    torch.manual_seed(0)
    ours = open_clip_simzss.create_model("simzss-vits14")
    path = tmp_path / "ckpt.pt"
    torch.save(ours.state_dict(), path)
    # force_image_size makes OpenCLIP resize the (native 37x37) position embeddings after loading
    plain = open_clip.create_model("simzss-vits14", pretrained=str(path), force_image_size=224)
    plain.eval()
    x, text = torch.randn(2, 3, 224, 224), tokenizer(["a cat", "a dog on grass"])
    assert torch.allclose(plain.encode_image(x), ours.encode_image(x), atol=1e-4)
    assert torch.allclose(plain.encode_text(text), ours.encode_text(text), atol=1e-5)


def test_trimmed_text_tower_equals_the_full_one(tiny_model, tokenizer):
    """Causal mask: running only up to the longest caption's EOS changes nothing (what training does)."""
    text = tokenizer(["a cat", "two tennis rackets on a red court near the old wooden fence"])
    assert tiny_model.can_trim_text
    full_pooled, full_tokens = tiny_model._encode_text_both(text, trim=False)
    pooled, tokens = tiny_model._encode_text_both(text)
    length = int(text.argmax(-1).max()) + 1
    assert tokens.shape[1] == length < full_tokens.shape[1]
    assert torch.allclose(pooled, full_pooled, atol=1e-5)
    assert torch.allclose(tokens, full_tokens[:, :length], atol=1e-5)
    mask = torch.zeros(2, 77, dtype=torch.bool)
    mask[0, 2], mask[1, [2, 3, 4]] = True, True
    index = torch.tensor([0, 1])
    assert torch.allclose(tiny_model.encode_text_concepts(tokens, index, mask),
                          tiny_model.encode_text_concepts(full_tokens, index, mask), atol=1e-5)
    mask[0, length + 1] = True
    with pytest.raises(ValueError, match="after its caption's end-of-text"):
        tiny_model.encode_text_concepts(tokens, index, mask)


# --- text concepts of the two variants (docs/method.md) ------------------------------------------------------------
def test_text_concepts_by_hand_paper_and_release():
    # g doubles the first coordinate; concept 0 = tokens [3, 4] and [0, 2] of caption 1, concept 1 = token [1, 0]
    tokens = torch.tensor([[[1.0, 0.0], [9.0, 9.0], [9.0, 9.0]], [[9.0, 9.0], [3.0, 4.0], [0.0, 2.0]]])
    mask = torch.tensor([[False, True, True], [True, False, False]])
    index = torch.tensor([1, 0])
    project = lambda x: x * torch.tensor([2.0, 1.0])  # noqa: E731
    paper = open_clip_simzss.text_concepts(tokens, index, mask, project, "paper")
    assert torch.allclose(paper, torch.tensor([[3.0, 3.0], [2.0, 0.0]]))  # g(mean) = g([1.5, 3])
    release = open_clip_simzss.text_concepts(tokens, index, mask, project, "release")
    # Σ normalize(g(token)): normalize([6, 4]) + normalize([0, 2]) = [6, 4] / sqrt(52) + [0, 1], not renormalised
    expected = torch.tensor([[6 / math.sqrt(52), 4 / math.sqrt(52) + 1.0], [1.0, 0.0]])
    assert torch.allclose(release, expected)
    with pytest.raises(ValueError, match="variant"):
        open_clip_simzss.text_concepts(tokens, index, mask, project, "mean")


def test_model_builds_text_concepts_with_its_variant(tokenizer):
    torch.manual_seed(0)
    batch = _batch(tokenizer)
    paper = open_clip_simzss.create_model("simzss-tiny")
    release = open_clip_simzss.create_model("simzss-tiny", simzss_variant="release")
    release.load_state_dict(paper.state_dict())
    assert (paper.simzss_variant, release.simzss_variant) == ("paper", "release")
    tokens = paper.encode_text_tokens(batch["text"])
    args = (tokens, batch["concept_image_index"], batch["concept_token_mask"])
    out = release(**batch)
    expected = open_clip_simzss.text_concepts(*args, release.project_text, "release")
    assert torch.allclose(out["text_concepts"], expected, atol=1e-5)
    # concept 2 spans two tokens: its release vector is a sum of two unit vectors
    assert out["text_concepts"][2].norm() > 1.01
    assert torch.allclose(paper(**batch)["text_concepts"], paper.encode_text_concepts(*args), atol=1e-5)
    with pytest.raises(ValueError, match="variant"):
        open_clip_simzss.create_model("simzss-tiny", simzss_variant="authors")


def _authors_concept_loss(model, batch, n_classes, tau, temperature):
    """The authors' single-process concept loss (tileb1/simzss@2142ac5, open_clip/model.py SimZSS.forward and
    loss.py ZSLoss.forward, beta_ema = 0), rewritten in their layout: a dense [n_classes + 1, d] classifier
    filled by scatter (the extra row takes padding), concepts as padded token-index tensors, the logits over
    all n_classes with absent classes masked to -inf."""
    tokens = F.normalize(model.project_text(model.encode_text_tokens(batch["text"])), dim=-1)
    b, n, d = tokens.shape
    mask, image_index, ids = batch["concept_token_mask"], batch["concept_image_index"], batch["concept_ids"]
    per_image = int(torch.bincount(image_index).max())
    width = int(mask.sum(1).max())
    indices = torch.full((b, per_image, width), n)  # index n = an appended zero token
    labels = torch.full((b, per_image), n_classes)
    slot = [0] * b
    for m in range(len(ids)):
        i = int(image_index[m])
        positions = mask[m].nonzero()[:, 0]
        indices[i, slot[i], :len(positions)] = positions
        labels[i, slot[i]] = ids[m]
        slot[i] += 1
    padded = torch.cat([tokens, tokens.new_zeros(b, 1, d)], dim=1)
    concepts = torch.gather(padded[:, None].expand(-1, per_image, -1, -1), 2,
                            indices[..., None].expand(-1, -1, -1, d)).sum(2)
    valid = (indices.min(-1).values != n).reshape(-1)
    classifier = torch.zeros(n_classes + 1, d).scatter_reduce(
        0, labels[..., None].expand(-1, -1, d).reshape(-1, d), concepts.reshape(-1, d), reduce="sum")
    classifier = F.normalize(F.normalize(classifier, dim=-1), dim=-1)  # beta_ema = 0: the "EMA" is the batch's
    queries = F.normalize(classifier[labels.reshape(-1)].reshape(b, per_image, d), dim=-1)
    patches = F.normalize(model.encode_dense(batch["image"]).flatten(1, 2), dim=-1)
    weights = torch.softmax(torch.einsum("bkd,bnd->bkn", queries, patches) / tau, dim=2)
    visual = F.normalize(torch.einsum("bnd,bkn->bkd", patches, weights).reshape(-1, d), dim=-1)[valid]
    true = labels.reshape(-1)[valid]
    counts = torch.zeros(n_classes).scatter_reduce(0, true, torch.ones(len(true)), reduce="sum")
    logits = (visual @ classifier[:-1].t()) / temperature
    with torch.no_grad():
        masked = logits.detach().clone()
        masked[:, counts == 0] = -float("inf")
        target = masked.argmax(1)
    logits = logits.masked_fill((counts == 0)[None], -float("inf"))
    return F.cross_entropy(logits, target), (target == true).float().mean()


# two concepts of one id (their queries are one shared row); three ids, one concept classified wrongly (2/3)
@pytest.mark.parametrize("ids", [[4, 1, 4], [9, 1, 4]])
def test_release_variant_equals_the_authors_single_process_loss(tokenizer, ids):
    torch.manual_seed(0)
    batch = _batch(tokenizer)
    batch["concept_ids"] = torch.tensor(ids)
    model = open_clip_simzss.create_model("simzss-tiny", simzss_variant="release")
    ours, accuracy = SimZSSLoss(lambda_concept=1.0, tau=0.1, concept_temperature=0.07, variant="release").concept_loss(
        **{k: v for k, v in model(**batch).items() if k in ("patch_tokens", "text_concepts", "concept_ids",
                                                            "concept_image_index")})
    ours.backward()
    ours_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    theirs, their_accuracy = _authors_concept_loss(model, batch, n_classes=574, tau=0.1, temperature=0.07)
    theirs.backward()
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    assert accuracy.item() == pytest.approx(their_accuracy.item())
    for n, g in ours_grads.items():
        assert torch.allclose(g, model.get_parameter(n).grad, rtol=1e-4, atol=1e-5), n
