#!/usr/bin/env python
"""Convert the authors' released SimZSS checkpoints to an open_clip_simzss model folder.

    python scripts/convert_reference_checkpoint.py --checkpoint simzss_coco.pth --output simzss-vitb14-coco-ref
    simzss-segment --checkpoint simzss-vitb14-coco-ref --image photo.jpg --labels "cat, grass" --output out

The authors released two ViT-B/14 checkpoints (COCO Captions, LAION-400M; README "Pretrained model", a OneDrive
link) as PyTorch state dicts of their ``SimZSS`` module. The output folder has OpenCLIP's hub layout
(``open_clip_config.json`` + ``open_clip_model.safetensors``): load it with ``local-dir:FOLDER``, use it as
``--checkpoint FOLDER``, or upload it (``simzss-checkpoint push``). Its config is
``simzss-vitb14`` plus ``vision_cfg.denoiser_cfg`` (the DVT denoiser, ``open_clip_simzss/denoiser.py``).
The mapping itself is ``open_clip_simzss.weights.authors.convert_reference_state_dict``.

What was VERIFIED from the reference sources (github tileb1/simzss @ 2142ac5)
-------------------------------------------------------------------------------------------------------
* ``src/open_clip/model.py``: ``class SimZSS(CustomTextCLIP)``. So the text tower is ``self.text`` (keys
  ``text.*``; not the top-level ``transformer.*`` of OpenCLIP's non-custom ``CLIP``) and there is one
  ``logit_scale`` (shape []). ``SimZSS.__init__`` adds persistent buffers ``classification_weights_ema``
  [n_classes + 1, 768] (n_classes = 574 in ``args_coco.json``), ``beta_ema`` [] and ``logit_scale_local`` [1]:
  training state of their concept loss, dropped here. Its ``ShallowDecoder`` has no parameters, and
  ``logit_bias`` / ``logit_bias_local`` are None (CLIP loss).
* The text tower is their fork's ``TextTransformer`` (``src/open_clip/transformer.py``): ``token_embedding``,
  ``positional_embedding`` [77, 512], ``transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2,
  mlp.c_fc, mlp.c_proj}``, ``ln_final``, ``text_projection`` [512, 768] (a Parameter), causal mask, EOS =
  argmax of the token ids: the names, shapes and maths of OpenCLIP 3.3's ``TextTransformer`` that we build.
  The config's ``"embed_cls": true`` is ignored by that class (not a constructor argument; the CLS code is
  commented out), so there is no ``cls_emb``. Width/heads/layers 512/12/8 -> 768 = our ``simzss-vitb14``.
* Vision (``model_configs/ours_dinov2_ViT-B-14_reg.json``: ``"ours": true``, ``denoiser_type: transformer``,
  ``timm_model_name_nooverride: vit_base_patch14_reg4_dinov2.lvd142m``; ``_build_vision_tower``'s ``is_ours``
  branch): ``visual = Denoiser(vit=ViTWrapper(...))`` from ``src/DenoisingViT``. ``ViTWrapper.model`` is a
  **timm** model (``timm.create_model(..., num_classes=0, dynamic_img_size=True)``), not torch.hub DINOv2, so
  the trunk's keys are ``visual.vit.model.<timm names>`` (``cls_token``, ``reg_token``, ``pos_embed`` [1, 1369,
  768], ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2,
  ls2.gamma}``, ``norm``). Their pinned timm is 0.9.16 (``requirements.txt``); we checked that timm 0.9.16's
  ``VisionTransformer``/``Block``/``Attention`` and ``vit_base_patch14_reg4_dinov2`` (reg_tokens=4,
  no_embed_class=True, init_values=1e-5) use exactly the names and shapes of the installed timm 1.0.x.
* ``Denoiser`` (``generalizable_denoiser.py``; DVT's, github Jiawei-Yang/Denoising-ViT) with
  ``denoiser_type="transformer"``: ``self.denoiser`` = timm ``Block(dim=768, num_heads=768 // 64, mlp_ratio=4,
  qkv_bias=True, qk_norm=False, init_values=None, norm_layer=LayerNorm(eps=1e-6), act_layer=GELU,
  mlp_layer=Mlp)`` (keys ``visual.denoiser.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``; no layer
  scale) and ``self.pos_embed`` [1, 37 * 37, 768] (key ``visual.pos_embed``). Forward: the ViT's last block
  output, final ``norm``; prefix tokens removed; ``x + resample_abs_pos_embed(pos_embed, (H, W),
  num_prefix_tokens=0)`` (bicubic, antialias, as timm 0.9.16 and 1.0.x do it) -> ``Block`` -> dense tokens;
  no norm after. The global token is the CLS token after ``norm`` of the *raw* ViT (``use_gap=False`` for
  ViT-B/14, ``image_features_type: cls``), not denoised. Our ``FrozenVisionTower`` + ``DVTDenoiser`` compute
  exactly this (tests/test_denoiser.py compares the two on a model with the reference's structure).
* Image statistics: the reference's ``create_model`` sets ``model.visual.image_mean/std`` to OpenCLIP's
  (CLIP) defaults for this tower, so it trained DINOv2 on CLIP-normalised images. ``--image-stats clip``
  (default) writes those into the folder's ``preprocess_cfg``; ``--image-stats tower`` uses DINOv2's own
  (ImageNet) statistics, our convention for models we train (docs/method.md).

ASSUMED (not verifiable without the files, which cannot be downloaded here)
---------------------------------------------------------------------------
* The released files are ``model.state_dict()`` of that module, possibly with DDP's ``module.`` prefix (their
  README loads them with ``k.replace("module.", "")`` and ``model.load_state_dict``), or an OpenCLIP training
  checkpoint with a ``"state_dict"`` entry. Both are handled.
* They load with ``torch.load(weights_only=True)`` (plain tensors). If a file holds other pickled objects,
  ``--trust-pickle`` loads it with ``weights_only=False`` (runs pickled code: only for files you trust).
* DVT's head count is ``dim // 64`` (12 for ViT-B): a block's weights do not record it.
* Hedges for layouts we did not see: an original-DINOv2 (torch.hub) trunk with ``mask_token`` /
  ``register_tokens`` is converted with timm's own ``checkpoint_filter_fn``; a top-level (non-custom) CLIP
  text tower moves under ``text.``. Any other unknown key is an error: nothing is dropped silently except the
  three training buffers named above and a ``head`` of a ``num_classes > 0`` tower.

Loading is strict: every parameter of our model must come from the file, with the same shape.
"""
import sys

from open_clip_simzss.cli.checkpoint import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
