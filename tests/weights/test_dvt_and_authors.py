"""The DVT denoiser as an optional module of the vision tower, and the conversion of the authors' released
checkpoints: a module with the reference code's structure and names (tileb1/simzss: ``SimZSS(CustomTextCLIP)``,
``visual = Denoiser(vit=ViTWrapper(timm ViT))``, see scripts/convert_reference_checkpoint.py) at simzss-tiny
dims is converted by the script, loaded strictly, and gives the reference forward's outputs."""
import json
import runpy
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from open_clip.transformer import TextTransformer
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block, Mlp

import open_clip_simzss
from open_clip_simzss import CheckpointError, load_model, load_tokenizer
from open_clip_simzss.weights.build import model_structure
from open_clip_simzss.weights.authors import CLIP_MEAN, convert_reference_checkpoint, convert_reference_state_dict
from open_clip_simzss.weights.read import mismatch
from open_clip_simzss.denoiser import DVTDenoiser, build_denoiser
from open_clip_simzss.weights.dvt import load_denoiser_weights
from open_clip_simzss.weights.resolve import resolve_spec
from open_clip_simzss.model import SimZSS

REPO = Path(__file__).resolve().parents[2]
TINY_TRUNK = dict(model_name="vit_tiny_patch16_224", patch_size=8, img_size=112, depth=6)


# --- the reference module's structure (names and shapes), rebuilt from its sources ---------------------------
class RefViTWrapper(nn.Module):
    """DenoisingViT.vit_wrapper.ViTWrapper: the timm model is ``.model``."""

    def __init__(self, model_name, **kwargs):
        super().__init__()
        self.model = timm.create_model(model_name, pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs)


class RefDenoiser(nn.Module):
    """DenoisingViT.generalizable_denoiser.Denoiser(denoiser_type="transformer") with its forward for
    ``return_class_token=True`` (the path SimZSS.encode_image takes)."""

    def __init__(self, vit, feature_dim, noise_map=(37, 37), use_gap=False):
        super().__init__()
        self.denoiser = Block(dim=feature_dim, num_heads=feature_dim // 64, mlp_ratio=4, qkv_bias=True,
                              qk_norm=False, init_values=None, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                              act_layer=nn.GELU, mlp_layer=Mlp)
        self.pos_embed = nn.Parameter(torch.randn(1, noise_map[0] * noise_map[1], feature_dim) * 0.02)
        self.vit = vit
        self.use_gap = use_gap

    def forward(self, x):
        m = self.vit.model
        out = m.forward_features(x)  # = the reference's _intermediate_layers(n=[last]) + norm
        patches = out[:, m.num_prefix_tokens:]
        b, _, hh, ww = x.shape
        h, w = hh // m.patch_embed.patch_size[0], ww // m.patch_embed.patch_size[1]
        cls = patches.mean(dim=1) if self.use_gap else out[:, 0]
        y = patches.reshape(b, h * w, -1)
        y = y + resample_abs_pos_embed(self.pos_embed, (h, w), num_prefix_tokens=0).repeat(b, 1, 1)
        return self.denoiser(y).reshape(b, h, w, -1), cls


class RefSimZSS(nn.Module):
    """The reference ``SimZSS(CustomTextCLIP)``: visual, text, logit_scale and its three training buffers."""

    def __init__(self, trunk: dict, dim, text_width, text_heads, text_layers, noise_map, use_gap, n_classes=574):
        super().__init__()
        self.visual = RefDenoiser(RefViTWrapper(**trunk), dim, noise_map, use_gap)
        self.text = TextTransformer(context_length=77, vocab_size=49408, width=text_width, heads=text_heads,
                                    layers=text_layers, output_dim=dim, output_tokens=True)
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
        self.register_buffer("classification_weights_ema", torch.zeros([n_classes + 1, dim]))
        self.register_buffer("beta_ema", torch.tensor(0.0))
        self.register_buffer("logit_scale_local", np.log(1 / 0.07) * torch.ones(1))

    def encode_text(self, tokens):
        """The reference TextTransformer.forward: ln_final, then the projection of every token, EOS by argmax."""
        t = self.text
        x = t.token_embedding(tokens) + t.positional_embedding
        x = t.ln_final(t.transformer(x, attn_mask=t.attn_mask)) @ t.text_projection
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]


DOCUMENTED_KEYS = [  # names read in the reference sources (script docstring), at any size
    "logit_scale", "classification_weights_ema", "beta_ema", "logit_scale_local",
    "visual.pos_embed", "visual.denoiser.norm1.weight", "visual.denoiser.attn.qkv.weight",
    "visual.denoiser.attn.proj.bias", "visual.denoiser.mlp.fc1.weight", "visual.denoiser.mlp.fc2.bias",
    "visual.vit.model.cls_token", "visual.vit.model.pos_embed", "visual.vit.model.patch_embed.proj.weight",
    "visual.vit.model.blocks.0.attn.qkv.weight", "visual.vit.model.blocks.0.mlp.fc2.weight",
    "visual.vit.model.norm.weight", "text.token_embedding.weight", "text.positional_embedding",
    "text.transformer.resblocks.0.attn.in_proj_weight", "text.transformer.resblocks.0.mlp.c_proj.weight",
    "text.ln_final.weight", "text.text_projection",
]


def tiny_reference(seed=0):
    torch.manual_seed(seed)
    ref = RefSimZSS(TINY_TRUNK, dim=192, text_width=128, text_heads=4, text_layers=3, noise_map=(9, 9),
                    use_gap=True).eval()  # simzss-tiny pools the patch mean ("avg" = the reference's use_gap)
    with torch.no_grad():
        for p in ref.parameters():  # away from default inits, so that any mix-up changes the outputs
            p.add_(0.02 * torch.randn_like(p))
    return ref


# --- the denoiser module ------------------------------------------------------------------------------------------
def test_denoiser_matches_dvt_forward():
    torch.manual_seed(0)
    den = DVTDenoiser(64, grid_size=5)
    dense = torch.randn(2, 3, 7, 64)  # a non-square grid: the position embedding is resampled
    pos = resample_abs_pos_embed(den.pos_embed, (3, 7), num_prefix_tokens=0)
    expected = den.block(dense.reshape(2, 21, 64) + pos).reshape(2, 3, 7, 64)
    torch.testing.assert_close(den(dense), expected)
    assert den.block.attn.num_heads == 1 and den.pos_embed.shape == (1, 25, 64)
    with pytest.raises(ValueError, match="unknown denoiser_cfg"):
        build_denoiser(64, {"grid": 5})
    with pytest.raises(ValueError, match="type"):
        build_denoiser(64, {"type": "conv3x3"})


def test_tower_with_denoiser_is_frozen_and_keeps_the_global_token():
    cfg = resolve_spec("simzss-tiny").model_cfg
    cfg.pop("custom_text")
    torch.manual_seed(0)
    plain = SimZSS(**cfg)
    cfg["vision_cfg"]["denoiser_cfg"] = {"grid_size": [14, 14]}
    denoised = SimZSS(**cfg)
    denoised.load_state_dict(plain.state_dict(), strict=False)  # same trunk and text weights
    assert not any(p.requires_grad for p in denoised.visual.parameters())
    denoised.train()
    assert not denoised.visual.denoiser.training
    image = torch.randn(1, 3, 112, 80)
    g0, d0 = plain.visual.forward_tokens(image)
    g1, d1 = denoised.visual.forward_tokens(image)
    torch.testing.assert_close(g0, g1)  # the global token is the raw tower's
    assert d1.shape == d0.shape == (1, 14, 10, 192) and not torch.allclose(d0, d1)
    assert not d1.requires_grad
    torch.testing.assert_close(d1, denoised.visual.denoiser(d0))


# --- converting the authors' checkpoints -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = tiny_reference()
    path = tmp_path_factory.mktemp("ref") / "simzss_ref.pth"
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, path)  # as saved from DDP
    return ref, path


def test_reference_structure_has_the_documented_names(reference):
    keys = set(reference[0].state_dict())
    assert set(DOCUMENTED_KEYS) <= keys
    assert not any(k.startswith(("visual.vit.model.head", "text.cls_emb")) for k in keys)


def test_convert_script_gives_equal_outputs(reference, tmp_path, monkeypatch):
    ref, path = reference
    out = tmp_path / "converted"
    # the script as a user runs it (in-process: a subprocess would add seconds of imports)
    monkeypatch.setattr(sys, "argv", ["convert_reference_checkpoint.py", "--checkpoint", str(path),
                                      "--model", "simzss-tiny", "--output", str(out)])
    with pytest.raises(SystemExit) as exit_status:
        runpy.run_path(str(REPO / "scripts" / "convert_reference_checkpoint.py"), run_name="__main__")
    assert exit_status.value.code == 0
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"]["vision_cfg"]["denoiser_cfg"] == {
        "type": "transformer", "grid_size": [9, 9], "num_heads": 3, "mlp_ratio": 4.0}
    assert config["preprocess_cfg"]["mean"] == list(CLIP_MEAN)  # what the reference trained with

    model, _ = load_model(checkpoint=str(out))  # strict
    tokenizer = load_tokenizer(model)
    image = torch.randn(2, 3, 112, 144, generator=torch.Generator().manual_seed(3))
    tokens = tokenizer(["a photo of a cat", "grass and sky"])
    with torch.no_grad():
        ref_dense, ref_global = ref.visual(image)
        ref_text = ref.encode_text(tokens)
        ours_global, ours_dense = model.visual.forward_tokens(image)
        ours_text = model.encode_text(tokens)
    torch.testing.assert_close(ours_dense, ref_dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_global, ref_global, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_text, ref_text, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.logit_scale, ref.logit_scale)


def test_conversion_is_strict(reference, tmp_path):
    ref, _ = reference
    state = ref.state_dict()
    with pytest.raises(CheckpointError, match="unknown keys.*visual.extra"):
        convert_reference_state_dict(dict(state, **{"visual.extra": torch.ones(1)}))
    broken = {k: v for k, v in state.items() if k != "visual.denoiser.mlp.fc2.bias"}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="lacks visual.denoiser.block.mlp.fc2.bias"):
        convert_reference_checkpoint(tmp_path / "broken.pth", tmp_path / "out", model_name="simzss-tiny")
    with pytest.raises(CheckpointError, match="does not fit simzss-vitb14"):  # a tiny checkpoint is no ViT-B
        convert_reference_checkpoint(tmp_path / "broken.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_convert_with_tower_statistics_and_original_dinov2_names(reference, tmp_path):
    ref, _ = reference
    state = dict(ref.state_dict())
    # an original-DINOv2 (torch.hub) trunk has a mask_token: timm's own converter handles it
    state["visual.vit.model.mask_token"] = torch.zeros(1, 192)
    torch.save(state, tmp_path / "hub_names.pth")
    out = convert_reference_checkpoint(tmp_path / "hub_names.pth", tmp_path / "out", model_name="simzss-tiny",
                                       image_stats="tower")
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["preprocess_cfg"]["mean"] == [0.5, 0.5, 0.5]  # simzss-tiny's tower statistics
    model = load_model(checkpoint=str(out))[0]
    torch.testing.assert_close(model.visual.denoiser.pos_embed, ref.visual.pos_embed)


def test_vitb14_reference_names_and_shapes_fit_simzss_vitb14():
    """The real sizes on the meta device: ViT-B/14 reg4 DINOv2 trunk, a 37x37 DVT grid, the 512/12/8 text
    tower into 768, 574 concepts."""
    with torch.device("meta"):
        ref = RefSimZSS(dict(model_name="vit_base_patch14_reg4_dinov2"), dim=768, text_width=512, text_heads=8,
                        text_layers=12, noise_map=(37, 37), use_gap=False)
    state = ref.state_dict()
    assert set(DOCUMENTED_KEYS) <= set(state) and "visual.vit.model.reg_token" in state
    assert state["visual.vit.model.pos_embed"].shape == (1, 1369, 768)
    converted, denoiser_cfg, dropped = convert_reference_state_dict(state)
    assert denoiser_cfg == {"type": "transformer", "grid_size": [37, 37], "num_heads": 12, "mlp_ratio": 4.0}
    assert sorted(dropped) == ["beta_ema", "classification_weights_ema", "logit_scale_local"]
    cfg = resolve_spec("simzss-vitb14").model_cfg
    cfg["vision_cfg"]["denoiser_cfg"] = denoiser_cfg
    shapes = {k: tuple(v.shape) for k, v in converted.items()}
    assert mismatch(model_structure(cfg), shapes) is None
    assert len(converted) == len(model_structure(cfg))


# --- DVT's released weights file ---------------------------------------------------------------------------------
def dvt_block(dim):
    """The block DVT trains (DenoisingViT/generalizable_denoiser.py, denoiser_type="transformer")."""
    return Block(dim=dim, num_heads=max(1, dim // 64), mlp_ratio=4, qkv_bias=True, qk_norm=False, init_values=None,
                 norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU, mlp_layer=Mlp)


def write_dvt_file(path, dim, grid, seed=0):
    """A file with the structure of DVT's release: what its train_denoiser.py saves, i.e. the Denoiser's state
    dict without the ``vit.`` backbone (``denoiser.<Block>``, ``pos_embed``), plus optimizer state and step."""
    torch.manual_seed(seed)
    block = dvt_block(dim)
    pos_embed = torch.randn(1, grid * grid, dim) * 0.02
    state = {f"denoiser.{k}": v for k, v in block.state_dict().items()}
    state["pos_embed"] = pos_embed
    optimizer = torch.optim.AdamW(block.parameters())
    torch.save({"denoiser": state, "optimizer": optimizer.state_dict(), "step": 9999}, path)
    return block, pos_embed


def test_dvt_file_loads_and_equals_a_hand_loaded_block(tmp_path):
    block, pos_embed = write_dvt_file(tmp_path / "dvt.pth", dim=64, grid=5)
    den = load_denoiser_weights(DVTDenoiser(64, grid_size=5), tmp_path / "dvt.pth")
    torch.testing.assert_close(den.pos_embed.data, pos_embed)
    dense = torch.randn(2, 3, 4, 64)  # another grid than the file's 5x5: the embedding is resampled
    with torch.no_grad():
        expected = block(dense.reshape(2, 12, 64) + resample_abs_pos_embed(pos_embed, (3, 4), num_prefix_tokens=0))
        torch.testing.assert_close(den(dense), expected.reshape(2, 3, 4, 64))


def test_bad_dvt_files_are_refused_in_one_line(tmp_path):
    write_dvt_file(tmp_path / "dvt.pth", dim=64, grid=5)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_denoiser_weights(DVTDenoiser(128, grid_size=5), tmp_path / "dvt.pth")  # another width
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a DVT denoiser file"):
        load_denoiser_weights(DVTDenoiser(64, grid_size=5), tmp_path / "other.pth")
    stored = torch.load(tmp_path / "dvt.pth", weights_only=True)
    stored["denoiser"]["vit.model.cls_token"] = torch.zeros(1, 1, 64)
    torch.save(stored, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unexpected key 'vit.model.cls_token'"):
        load_denoiser_weights(DVTDenoiser(64, grid_size=5), tmp_path / "extra.pth")


def tiny_dvt_folder(tmp_path, hub_file=None, with_weights=False):
    """A ``local-dir:`` model: simzss-tiny with a denoiser on its 14x14 grid."""
    cfg = resolve_spec("simzss-tiny").model_cfg
    cfg["vision_cfg"]["denoiser_cfg"] = {"type": "transformer", "grid_size": [14, 14], "num_heads": 3}
    if hub_file:
        cfg["vision_cfg"]["denoiser_cfg"]["hub_file"] = hub_file
    folder = tmp_path / "tiny-dvt"
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    if with_weights:
        model_cfg = {k: v for k, v in cfg.items() if k != "custom_text"}
        torch.save(SimZSS(**model_cfg).state_dict(), folder / "open_clip_pytorch_model.bin")
    return f"local-dir:{folder}"


def test_create_model_loads_dvt_weights_from_argument_or_environment(tmp_path, monkeypatch):
    block, pos_embed = write_dvt_file(tmp_path / "dvt.pth", dim=192, grid=14)
    spec = tiny_dvt_folder(tmp_path)
    model = open_clip_simzss.create_model(spec, denoiser_weights=str(tmp_path / "dvt.pth"))
    torch.testing.assert_close(model.visual.denoiser.pos_embed.data, pos_embed)
    torch.testing.assert_close(model.visual.denoiser.block.mlp.fc2.weight.data, block.mlp.fc2.weight.data)
    monkeypatch.setenv("SIMZSS_DENOISER_WEIGHTS", str(tmp_path / "dvt.pth"))
    from_env = open_clip_simzss.create_model(spec)
    torch.testing.assert_close(from_env.visual.denoiser.pos_embed.data, pos_embed)
    with pytest.raises(FileNotFoundError, match="DVT denoiser weights not found"):
        open_clip_simzss.create_model(spec, denoiser_weights=str(tmp_path / "missing.pth"))
    # a model without a denoiser: explicit weights are refused, the environment variable does not apply
    assert open_clip_simzss.create_model("simzss-tiny").visual.denoiser is None
    with pytest.raises(CheckpointError, match="has no DVT denoiser"):
        open_clip_simzss.create_model("simzss-tiny", denoiser_weights=str(tmp_path / "dvt.pth"))


def test_denoiser_without_weights_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("SIMZSS_DENOISER_WEIGHTS", raising=False)
    with pytest.raises(CheckpointError, match="no weights for it: give --denoiser-weights FILE or set "
                                              "SIMZSS_DENOISER_WEIGHTS"):
        open_clip_simzss.create_model(tiny_dvt_folder(tmp_path))
    # offline (HF_HUB_OFFLINE=1 in tests), a hub file cannot be fetched: one line naming the variable
    with pytest.raises(CheckpointError, match="cannot get the DVT denoiser weights hf-hub:org/repo/dvt.pth .*"
                                              "SIMZSS_DENOISER_WEIGHTS") as error:
        open_clip_simzss.create_model(tiny_dvt_folder(tmp_path / "hub", hub_file="org/repo/dvt.pth"))
    assert "\n" not in str(error.value)
    # a full SimZSS checkpoint brings the denoiser: nothing else is needed
    full = open_clip_simzss.create_model(tiny_dvt_folder(tmp_path / "full", with_weights=True))
    assert full.visual.denoiser is not None
    assert open_clip_simzss.create_model(tiny_dvt_folder(tmp_path / "none"), load_weights=False).visual.denoiser


@pytest.mark.slow
def test_simzss_vitb14_dvt_takes_the_released_file_structure(tmp_path):
    """The shipped config at its real size: DVT's ViT-B/14 file has pos_embed [1, 37 * 37, 768]."""
    cfg = resolve_spec("simzss-vitb14-dvt").model_cfg
    assert cfg["vision_cfg"]["timm_model_name"] == "vit_base_patch14_reg4_dinov2"
    assert cfg["vision_cfg"]["denoiser_cfg"]["hub_file"] == (
        "jjiaweiyang/DVT/voc_denoised/vit_base_patch14_reg4_dinov2.lvd142m.pth")
    block, pos_embed = write_dvt_file(tmp_path / "dvt.pth", dim=768, grid=37)
    assert pos_embed.shape == (1, 1369, 768)
    model = open_clip_simzss.create_model("simzss-vitb14-dvt", denoiser_weights=str(tmp_path / "dvt.pth"))
    dense = torch.randn(1, 16, 16, 768)
    with torch.no_grad():
        expected = block(dense.reshape(1, 256, 768) + resample_abs_pos_embed(pos_embed, (16, 16), num_prefix_tokens=0))
        torch.testing.assert_close(model.visual.denoiser(dense), expected.reshape(1, 16, 16, 768))
