"""The SimZSS model: configs, shapes, a frozen tower for real, weights from local files, OpenCLIP interop."""
import open_clip
import pytest
import torch
from safetensors.torch import save_file

import open_clip_simzss
from open_clip_simzss.loss import SimZSSLoss, total_loss

ALL_MODELS = open_clip_simzss.list_models()


def test_configs_are_registered_with_open_clip():
    assert set(ALL_MODELS) >= {
        "simzss-vits14", "simzss-vitb14", "simzss-vitl14", "simzss-vits14-noreg", "simzss-vitb14-noreg",
        "simzss-vitl14-noreg", "simzss-vitb16-augreg", "simzss-tiny",
    }
    assert set(ALL_MODELS) <= set(open_clip.list_models())
    assert open_clip.get_tokenizer("simzss-vitb14").context_length == 77


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_config_builds_and_gives_dense_tokens_at_224_and_448(name):
    torch.manual_seed(0)
    model, _, preprocess = open_clip_simzss.create_model_and_transforms(name)
    cfg = open_clip.get_model_config(name)
    dim = cfg["embed_dim"]
    patch = model.visual.patch_size
    for size in (224, 448):
        dense = model.encode_dense(torch.randn(1, 3, size, size))
        assert dense.shape == (1, size // patch, size // patch, dim)
    assert model.encode_text(open_clip.get_tokenizer(name)(["a photo"])).shape == (1, dim)
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
