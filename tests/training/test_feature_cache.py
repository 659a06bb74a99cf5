"""Frozen-feature cache: same loss as the uncached path, keyed on everything that determines the features."""
import open_clip
import pytest
import torch
import webdataset as wds

import open_clip_simzss
from training.data import SampleDecoder
from open_clip_simzss.weights.identity import tower_fingerprint
from training.feature_cache import FeatureCache
from open_clip_simzss.loss import SimZSSLoss
from tests.helpers.shards import write_shards
from training.main import cli

pytestmark = pytest.mark.slow  # processes, training or installs (make test-fast leaves it out)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, extractor):
    root = tmp_path_factory.mktemp("cache")
    pattern = write_shards(root / "shards", 2, 6, annotate=extractor.annotate, corrupt_keys={"000000004"})
    torch.manual_seed(0)
    model, _, preprocess_val = open_clip_simzss.create_model_and_transforms("simzss-tiny")
    return root, pattern, model, preprocess_val


def decoded(pattern, decoder):
    return list(decoder(wds.DataPipeline(wds.SimpleShardList(pattern), wds.tarfile_to_samples())))


@pytest.mark.parametrize("dtype, atol", [("float32", 1e-5), ("float16", 2e-2)])
def test_cached_batch_gives_the_uncached_loss(setup, tokenizer, dtype, atol):
    root, pattern, model, preprocess_val = setup
    cache = FeatureCache.for_model(root / "features", model, open_clip.get_model_preprocess_cfg(model), dtype)
    urls = wds.shardlists.expand_urls(pattern)
    assert cache.build(urls, model, preprocess_val) == 11  # 12 samples, one corrupt image
    assert cache.build(urls, model, preprocess_val) == 0   # resumable: nothing left to do
    plain = decoded(pattern, SampleDecoder(preprocess_val, tokenizer, with_concepts=True))
    cached_decoder = SampleDecoder(preprocess_val, tokenizer, with_concepts=True, feature_cache=cache)
    cached = decoded(pattern, cached_decoder)
    assert len(plain) == len(cached) == 11 and cached_decoder.counter.skipped == 1

    from training.data import collate_concepts
    concepts = collate_concepts([s[2] for s in plain], tokenizer.context_length)
    texts = torch.stack([s[1] for s in plain])
    loss_fn = SimZSSLoss(lambda_concept=0.5)
    uncached_out = model(image=torch.stack([s[0] for s in plain]), text=texts, **concepts)
    cached_out = model(image_features=torch.stack([s[0][0] for s in cached]),
                       patch_tokens=torch.stack([s[0][1] for s in cached]), text=texts, **concepts)
    a, b = SimZSSLoss(lambda_concept=0.5)(**uncached_out), loss_fn(**cached_out)
    assert a["concept_loss"] > 0
    for k in ("contrastive_loss", "concept_loss"):
        assert a[k].item() == pytest.approx(b[k].item(), abs=atol), k


def test_fingerprint_changes_with_tower_resolution_and_preprocessing(setup):
    _, _, model, _ = setup
    cfg = open_clip.get_model_preprocess_cfg(model)
    base = tower_fingerprint(model, cfg, "float16")
    assert tower_fingerprint(model, dict(cfg, size=(224, 224)), "float16") != base
    assert tower_fingerprint(model, dict(cfg, mean=(0.1, 0.2, 0.3)), "float16") != base
    assert tower_fingerprint(model, cfg, "float32") != base
    torch.manual_seed(1)
    other = open_clip_simzss.create_model("simzss-tiny")
    assert tower_fingerprint(other, cfg, "float16") != base
    assert tower_fingerprint(model, dict(cfg), "float16") == base



def test_fingerprint_covers_the_denoiser_and_its_weights(setup):
    _, _, model, _ = setup
    cfg = open_clip.get_model_preprocess_cfg(model)
    model_cfg = open_clip.get_model_config("simzss-tiny")
    model_cfg = {k: v for k, v in model_cfg.items() if k != "custom_text"}
    model_cfg["vision_cfg"] = dict(model_cfg["vision_cfg"], denoiser_cfg={"grid_size": [14, 14]})
    prints = set()
    for seed in (0, 1):
        torch.manual_seed(seed)
        denoised = open_clip_simzss.SimZSS(**model_cfg)
        denoised.visual.trunk.load_state_dict(model.visual.trunk.state_dict())  # the same tower, plus a denoiser
        prints.add(tower_fingerprint(denoised, cfg, "float16"))
    assert len(prints) == 2 and tower_fingerprint(model, cfg, "float16") not in prints


def test_training_with_the_cache_and_refusal_with_augmentation(setup, tmp_path, capsys):
    _, pattern, _, _ = setup
    argv = ["--model", "simzss-tiny", "--train-data", pattern, "--train-num-samples", "8", "--batch-size", "4",
            "--workers", "1", "--epochs", "1", "--logs", str(tmp_path / "logs"), "--name", "cached",
            "--cache-vision-features", str(tmp_path / "features")]
    assert cli(argv) == 0
    assert len(list((tmp_path / "features").glob("*/*.dense.npy"))) == 2
    assert cli(argv[:-2] + ["--name", "aug", "--cache-vision-features", str(tmp_path / "f"),
                            "--aug-cfg", "scale=(0.5, 1.0)"]) == 2
    assert "random image augmentation" in capsys.readouterr().err


def test_identical_images_are_encoded_once(tmp_path, setup):
    from open_clip_simzss.workflows import synthetic
    _, _, model, preprocess_val = setup
    info = synthetic.write_train_shards(tmp_path / "s", 4, seed=0, captions_per_image=3, images_per_shard=4)
    cache = FeatureCache.for_model(tmp_path / "f", model, open_clip.get_model_preprocess_cfg(model))
    url = wds.shardlists.expand_urls(info["pattern"])[0]
    assert cache.build([url], model, preprocess_val) == 4  # 12 samples, 4 photos
    first, second = cache.lookup(url, "000000000"), cache.lookup(url, "000000001")  # two captions, one photo
    assert torch.equal(first[1], second[1]) and not torch.equal(first[1], cache.lookup(url, "000000003")[1])
