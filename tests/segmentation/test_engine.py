"""The segmentation engine: protocol geometry, text classifier and background (docs/evaluation.md),
PAMR, and the sliding-window inference checked against whole-image inference."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from open_clip_simzss.images import to_uint8_image
from open_clip_simzss.segmentation.background import BackgroundRule, apply_background, foreground_confidence
from open_clip_simzss.segmentation.classifier import TEMPLATE_SETS, build_text_classifier, get_templates
from open_clip_simzss.segmentation.engine import SlidingWindowEngine
from open_clip_simzss.segmentation.pamr import PAMR, neighbour_offsets
from open_clip_simzss.segmentation.protocol import SegmentationProtocol
from open_clip_simzss.segmentation.windows import rescale_size, resize_image_uint8, window_grid

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


class PatchLinearModel(nn.Module):
    """A fake SimZSS: each patch token is a fixed linear map of the pixels under that patch (nothing else), and
    a text feature is the mean embedding of its tokens."""

    def __init__(self, patch_size=8, dim=12, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.visual = nn.Module()
        self.visual.patch_size = patch_size
        self.visual.proj = nn.Parameter(torch.randn(3 * patch_size ** 2, dim, generator=gen))
        self.token_embedding = nn.Parameter(torch.randn(49408, dim, generator=gen))
        self.dense_calls = []

    def encode_dense(self, images, normalize=False):
        b, c, h, w = images.shape
        p = self.visual.patch_size
        assert h % p == 0 and w % p == 0, "the engine must only send multiples of the patch size"
        self.dense_calls.append(tuple(images.shape))
        patches = images.unfold(2, p, p).unfold(3, p, p)  # [B, C, h/p, w/p, p, p]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, h // p, w // p, c * p * p)
        out = patches @ self.visual.proj
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(self, tokens, normalize=False):
        mask = (tokens != 0).float().unsqueeze(-1)
        out = (self.token_embedding[tokens] * mask).sum(1) / mask.sum(1)
        return F.normalize(out, dim=-1) if normalize else out


@pytest.fixture(scope="module")
def fake_model():
    return PatchLinearModel()


def make_segmenter(model, tokenizer, classes=("dog", "cat", "grass"), templates="photo1", mean=MEAN, std=STD,
                   window_batch_size=4, max_chunk_elements=1 << 24, **protocol):
    """(engine, text classifier) of ``classes`` under the protocol's keyword arguments."""
    engine = SlidingWindowEngine(model, SegmentationProtocol.of(templates=templates, **protocol),
                                 window_batch_size=window_batch_size, mean=mean, std=std,
                                 max_chunk_elements=max_chunk_elements)
    return engine, build_text_classifier(model, tokenizer, list(classes), templates)


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- geometry ----------------------------------------------------------------------------------------------
def test_rescale_size_protocol_examples():
    assert rescale_size(375, 500) == (448, 597)  # VOC 500x375 -> 597x448
    assert rescale_size(1024, 2048) == (448, 896)  # Cityscapes 2048x1024 -> 896x448
    assert rescale_size(100, 100) == (448, 448)  # small images are enlarged
    assert rescale_size(200, 2000) == (205, 2048)  # aspect > 4.57: the long side caps, short side < 448
    assert rescale_size(480, 640) == (448, 597)  # int(x * f + 0.5) rounding: 640 * 448/480 = 597.33


def test_window_grid_placement():
    assert window_grid(448, 896) == [(0, 448, 0, 448), (0, 448, 224, 672), (0, 448, 448, 896)]  # 1x3
    assert window_grid(448, 597) == [(0, 448, 0, 448), (0, 448, 149, 597)]  # last window moved back inside
    assert window_grid(448, 448) == [(0, 448, 0, 448)]
    assert window_grid(300, 200) == [(0, 300, 0, 200)]  # smaller than the crop: used as-is, no padding
    assert window_grid(205, 2048)[-1] == (0, 205, 1600, 2048)
    boxes = window_grid(1000, 700)
    # n = max(size - 448 + 223, 0) // 224 + 1 per axis: 4 rows x 3 cols; the last ones are moved back inside
    assert len(boxes) == 12 and sorted({b[0] for b in boxes}) == [0, 224, 448, 552]
    assert sorted({b[2] for b in boxes}) == [0, 224, 252]
    cover = np.zeros((1000, 700), int)
    for y1, y2, x1, x2 in boxes:
        assert (y2 - y1, x2 - x1) == (448, 448)
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1


def test_resize_is_cv2_like():
    row = torch.tensor([[[0, 255]]], dtype=torch.uint8).expand(3, 1, 2)
    # cv2.INTER_LINEAR, half-pixel centres, edge clamped, rounded to uint8: [0, 63.75, 191.25, 255]
    assert resize_image_uint8(row, (1, 4))[0, 0].tolist() == [0, 64, 191, 255]
    down = torch.arange(8, dtype=torch.uint8).view(1, 1, 8).expand(3, 1, 8) * 10
    # 2x downscale without antialiasing: each output is the mean of 2 inputs (not of a wider kernel)
    assert resize_image_uint8(down, (1, 4))[0, 0].tolist() == [5, 25, 45, 65]


def test_image_input_formats_agree():
    hwc = random_image(10, 14)
    expected = torch.from_numpy(hwc).permute(2, 0, 1)
    for image in (hwc, Image.fromarray(hwc), expected, np.ascontiguousarray(hwc.transpose(2, 0, 1))):
        assert torch.equal(to_uint8_image(image), expected)
    assert to_uint8_image(hwc[..., 0]).shape == (3, 10, 14)  # grey
    with pytest.raises(ValueError):
        to_uint8_image(hwc.astype(np.float32))
    with pytest.raises(TypeError):
        to_uint8_image([[1, 2]])


# --- text classifier ---------------------------------------------------------------------------------------
def test_templates():
    assert len(get_templates("openai80")) == 80 and len(get_templates("simple7")) == 7
    assert len(get_templates("tcl9")) == 9 and "a bad photo of a {}." in get_templates("tcl7")
    assert set(get_templates("tcl7")) - set(get_templates("simple7")) == {"a bad photo of a {}."}
    assert all("{}" in t for ts in TEMPLATE_SETS.values() for t in ts)
    with pytest.raises(ValueError):
        get_templates("nope")
    with pytest.raises(ValueError):
        get_templates(["no placeholder"])


def test_text_classifier_normalises_per_prompt_then_averages(fake_model, tokenizer):
    templates = ["a photo of a {}.", "art of the {}."]
    clf = build_text_classifier(fake_model, tokenizer, ["dog", ["tv monitor", "television"]], templates,
                                batch_size=3)

    def enc(texts):
        return F.normalize(fake_model.encode_text(tokenizer(texts)), dim=-1)

    dog = F.normalize(enc(["a photo of a dog.", "art of the dog."]).mean(0), dim=0)
    tv = F.normalize(enc([t.replace("{}", n) for n in ("tv monitor", "television") for t in templates]).mean(0),
                     dim=0)
    torch.testing.assert_close(clf.weights, torch.stack([dog, tv]))
    assert clf.num_classes == 2
    # averaging raw embeddings (TCL) would give another direction: per-prompt normalisation matters
    raw = F.normalize(fake_model.encode_text(tokenizer(["a photo of a dog.", "art of the dog."])).mean(0), dim=0)
    assert not torch.allclose(raw, dog, atol=1e-4)

    clf_max = build_text_classifier(fake_model, tokenizer, ["dog", ["tv monitor", "television"]], templates,
                                    synonyms="max")
    assert clf_max.weights.shape[0] == 3 and clf_max.query_class.tolist() == [0, 1, 1]
    feats = F.normalize(torch.randn(5, clf.weights.shape[1]), dim=-1)
    sims = feats @ clf_max.weights.t()
    torch.testing.assert_close(clf_max.scores(feats), torch.stack([sims[:, 0], sims[:, 1:].max(1).values], 1))


# --- sliding window ------------------------------------------------------------------------------------------
def _safe_pixels(size, boxes, axis, half_patch):
    """Pixels whose bilinear taps are the same in every covering window as in the whole image: at least half a
    patch away from every window edge that is not an image border."""
    safe = np.ones(size, bool)
    for box in boxes:
        lo, hi = box[0:2] if axis == 0 else box[2:4]
        for u in range(lo, hi):
            if (lo > 0 and u - lo < half_patch) or (hi < size and hi - 1 - u < half_patch):
                safe[u] = False
    return safe


def test_sliding_window_equals_whole_image_away_from_window_borders(fake_model, tokenizer):
    h, w, p = 64, 96, fake_model.visual.patch_size
    seg, clf = make_segmenter(fake_model, tokenizer, short_side=64, window=32, stride=16)
    image = random_image(h, w)
    logits = seg.logits(image, clf)
    assert logits.shape == (3, h, w)

    # Whole-image reference: one forward on the full image, patch scores upsampled to the image.
    x = (torch.from_numpy(image).permute(2, 0, 1).float() - seg.mean) / seg.std
    tokens = F.normalize(fake_model.encode_dense(x[None]), dim=-1)
    whole = F.interpolate(clf.scores(tokens).permute(0, 3, 1, 2), size=(h, w), mode="bilinear",
                          align_corners=False)[0]

    boxes = window_grid(h, w, 32, 16)
    assert len(boxes) == 3 * 5
    safe = _safe_pixels(h, boxes, 0, p // 2)[:, None] & _safe_pixels(w, boxes, 1, p // 2)[None, :]
    assert safe.mean() > 0.2
    torch.testing.assert_close(logits[:, safe], whole[:, safe], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits[:, ~safe], whole[:, ~safe], atol=1e-3)  # the test can tell them apart
    assert logits.abs().max() <= 1 + 1e-5 and logits.std() > 0.05  # cosines, not constant


def test_separable_stitching_equals_window_by_window(fake_model, tokenizer):
    seg, clf = make_segmenter(fake_model, tokenizer, window=32, stride=16)
    # 3x5 windows; 2 rows of windows with the last one moved back (rows 0 and 8); smaller than the window and
    # padded from 20 to 24 rows
    for size in [(64, 96), (40, 90), (20, 100)]:
        normalized = torch.randn(3, *size)
        (boxes, crop, padded, scores, _), = seg._window_scores([normalized], clf)
        explicit = seg._stitch_windows(size, boxes, crop, padded, scores)
        separable = seg._stitch_separable(size, boxes, crop, padded, scores)
        torch.testing.assert_close(separable, explicit, atol=1e-5, rtol=1e-5)
        assert explicit.std() > 0.05


@pytest.mark.parametrize("pamr", [False, True])
def test_windows_batched_across_images_give_each_image_its_own_result(fake_model, tokenizer, pamr):
    # windows of 20x32 crops (padded to 24x32 for the patch grid): 1 + 2 + 3 of the first three images, then
    # one 32x20 crop, then 3 more 20x32: 4 per forward, crossing image boundaries, never mixing crop sizes
    seg, clf = make_segmenter(fake_model, tokenizer, short_side=20, window=32, stride=16, window_batch_size=4,
                              pamr=pamr)
    torch.manual_seed(3)
    images = [torch.randint(0, 256, size + (3,), dtype=torch.uint8).numpy()
              for size in [(40, 64), (30, 60), (40, 100), (64, 40), (40, 100)]]
    fake_model.dense_calls.clear()
    batched = seg.classes_and_confidence_batch(images, clf)
    assert [shape[0] for shape in fake_model.dense_calls] == [4, 2, 1, 3]  # windows per forward of the tower
    for image, (labels, confidence) in zip(images, batched):
        single_labels, single_confidence = seg.classes_and_confidence(image, clf)
        assert torch.equal(labels, single_labels)
        torch.testing.assert_close(confidence, single_confidence, atol=1e-6, rtol=1e-6)


def test_windows_are_batched_and_cover_protocol_sizes(tokenizer):
    model = PatchLinearModel(patch_size=14)
    seg, clf = make_segmenter(model, tokenizer, window_batch_size=2)
    out = seg.logits(random_image(1024, 2048), clf)  # Cityscapes-like: 896x448 -> 1x3 windows of 448
    assert out.shape == (3, 1024, 2048)
    assert model.dense_calls == [(2, 3, 448, 448), (1, 3, 448, 448)]


def test_image_smaller_than_window_is_padded_to_the_patch_grid(fake_model, tokenizer):
    # Aspect ratio 5: the short side (20) stays below the window and is not a multiple of the patch size 8.
    seg, clf = make_segmenter(fake_model, tokenizer, short_side=20, max_long_side=100, window=32, stride=16)
    image = random_image(20, 100)
    logits = seg.logits(image, clf)
    assert logits.shape == (3, 20, 100)
    # Reference: the first window (20x32), padded with the mean colour to 24x32, computed by hand.
    x = (torch.from_numpy(image).permute(2, 0, 1).float() - seg.mean) / seg.std
    crop = F.pad(x[None, :, :, :32], (0, 0, 0, 4))
    scores = clf.scores(F.normalize(fake_model.encode_dense(crop), dim=-1)).permute(0, 3, 1, 2)
    ref = F.interpolate(scores, size=(24, 32), mode="bilinear", align_corners=False)[0, :, :20, :16]
    torch.testing.assert_close(logits[:, :, :12], ref[:, :, :12], atol=1e-5, rtol=1e-5)  # only window 0 there


def test_predict_matches_full_resolution_logits(fake_model, tokenizer):
    seg, clf = make_segmenter(fake_model, tokenizer, short_side=32, window=32, stride=16, max_chunk_elements=300)
    # 45x70 is resized to 32x50 and back; 150x230 to 32x49 and 4.7x up, where most output pixels lie between
    # 4 source pixels of one label (the shortcut) and the rest near label boundaries (computed in chunks);
    # 32x48 is not resized at all.
    for image in (random_image(45, 70, seed=3), random_image(150, 230, seed=4), random_image(32, 48, seed=5)):
        logits = seg.logits(image, clf)
        for score in ("sigmoid", "softmax"):
            seg.protocol = seg.protocol.replace(background=BackgroundRule(score))
            labels, conf = seg.classes_and_confidence(image, clf)
            assert torch.equal(labels, logits.argmax(0))
            torch.testing.assert_close(conf, foreground_confidence(logits, score, seg.protocol.background.scale))
        seg.protocol = seg.protocol.replace(background=BackgroundRule())
        assert torch.equal(seg.predict(Image.fromarray(image), clf), logits.argmax(0))
        assert seg.classes_and_confidence(image, clf, with_confidence=False)[1] is None


def test_full_resolution_argmax_when_a_third_class_wins_between_two_pixels(fake_model, tokenizer):
    seg, _ = make_segmenter(fake_model, tokenizer)
    # Two source pixels: class 0 wins left, class 1 right; class 2 is second at both and wins in between.
    stitched = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[0.9, 0.9]]])
    labels, conf = seg.reduce_to_size(stitched, (3, 8))
    ref = F.interpolate(stitched[None], size=(3, 8), mode="bilinear", align_corners=False)[0]
    assert labels[0].tolist() == [0, 0, 2, 2, 2, 2, 1, 1] and torch.equal(labels, ref.argmax(0))
    torch.testing.assert_close(conf, torch.sigmoid(ref.max(0).values))


# --- background (docs/evaluation.md, "Background") -----------------------------------------------------------
@pytest.mark.parametrize("score", ["sigmoid", "softmax"])
def test_background_threshold_equals_constant_background_channel(fake_model, tokenizer, score):
    image = random_image(40, 56, seed=1)
    seg, clf = make_segmenter(fake_model, tokenizer, short_side=32, window=32, stride=16, background_score=score,
                              background_scale=10.0)
    logits = seg.logits(image, clf)
    probs = torch.sigmoid(logits) if score == "sigmoid" else torch.softmax(10.0 * logits, dim=0)
    conf = probs.max(0).values
    threshold = float(conf.median())  # half the pixels become background
    seg.protocol = seg.protocol.replace(background=seg.protocol.background.with_threshold(threshold))
    pred = seg.predict(image, clf)
    # TCL/Talk2DINO: a constant bg_thresh channel in front of the class scores, then the argmax.
    constant = torch.cat([torch.full_like(probs[:1], threshold), probs]).argmax(0)
    ties = torch.isclose(conf, torch.tensor(threshold), atol=1e-6)
    assert torch.equal(pred[~ties], constant[~ties])
    assert torch.equal(pred == 0, conf < threshold)
    assert 0.3 < (pred == 0).float().mean() < 0.7
    assert torch.equal(pred[pred > 0] - 1, logits.argmax(0)[pred > 0])  # foreground keeps its class (+1)


def test_sigmoid_threshold_is_a_cosine_threshold():
    logits = torch.tensor([[[0.1, 0.25]], [[0.19, -0.3]]])  # 2 classes, 1x2 pixels; max cos 0.19 and 0.25
    conf = foreground_confidence(logits, "sigmoid")
    labels = apply_background(logits.argmax(0), conf, 0.55)  # logit(0.55) = 0.2007
    assert labels.tolist() == [[0, 1]]


# --- PAMR ---------------------------------------------------------------------------------------------------
def test_pamr_affinities_and_constant_masks():
    pamr = PAMR()
    assert len(pamr.offsets) == 48 and neighbour_offsets([2])[0] == (-2, -2)
    image = torch.rand(1, 3, 20, 24)
    alpha = pamr.affinity(image)
    assert alpha.shape == (1, 48, 20, 24) and (alpha > 0).all()
    torch.testing.assert_close(alpha.sum(1), torch.ones(1, 20, 24))
    const = torch.full((1, 2, 20, 24), 0.4)
    torch.testing.assert_close(pamr(image, const), const)  # a constant (background) channel survives


def test_pamr_snaps_masks_to_image_edges():
    gen = torch.Generator().manual_seed(0)
    image = torch.zeros(1, 3, 32, 32)
    image[..., 16:] = 1.0  # left dark, right bright
    image += 0.01 * torch.rand(image.shape, generator=gen)
    mask = torch.zeros(1, 2, 32, 32)
    mask[:, 0, :, :19] = 1  # channel 0 spills 3 columns over the edge at x=16
    mask[:, 1] = 1 - mask[:, 0]
    out = PAMR()(image, mask)
    spill = out[0, 0, :, 16:19].mean()
    assert spill < 0.5  # the spilled columns now follow the image (they were 1)
    assert out[0, 0, :, :14].mean() > 0.95  # inside the dark half the mask stays
    torch.testing.assert_close(out.sum(1), torch.ones(1, 32, 32))


def test_engine_with_pamr_runs_and_changes_scores(fake_model, tokenizer):
    image = random_image(32, 48, seed=2)
    plain, clf = make_segmenter(fake_model, tokenizer, short_side=32, window=32, stride=16)
    refined, _ = make_segmenter(fake_model, tokenizer, short_side=32, window=32, stride=16, pamr=True)
    a, b = plain.logits(image, clf), refined.logits(image, clf)
    assert a.shape == b.shape and not torch.allclose(a, b)
    assert b.max() <= a.max() + 1e-5 and b.min() >= a.min() - 1e-5  # convex combinations


def test_real_tiny_model_end_to_end(tiny_model, tokenizer):
    seg = SlidingWindowEngine(tiny_model, SegmentationProtocol.of(templates="simple7", short_side=64, window=64,
                                                                  stride=32, background_threshold=0.5))
    clf = build_text_classifier(tiny_model, tokenizer, ["dog", "cat"], "simple7")
    pred = seg.predict(torch.from_numpy(random_image(50, 80)).permute(2, 0, 1), clf)
    assert pred.shape == (50, 80) and pred.dtype == torch.int64
    assert int(pred.min()) >= 0 and int(pred.max()) <= 2
    mean = torch.tensor(tiny_model.visual.preprocess_cfg["mean"]).view(3, 1, 1) * 255
    torch.testing.assert_close(seg.mean, mean)  # the tower's own statistics


def test_classifier_is_the_renormalised_mean_of_full_length_prompt_embeddings(tiny_model, tokenizer):
    """The classifier recipe (docs/evaluation.md, "Prompts") by hand, with the text tower run on all 77 positions (the classifier uses the trimmed tower)."""
    import torch.nn.functional as F
    names = ["dog", ["tv monitor", "television"], "a very long class name of many words"]
    fast = build_text_classifier(tiny_model, tokenizer, names, "simple7")
    rows = []
    for syns in [["dog"], ["tv monitor", "television"], ["a very long class name of many words"]]:
        prompts = [t.replace("{}", n) for n in syns for t in get_templates("simple7")]
        with torch.no_grad():
            feats = F.normalize(tiny_model._encode_text_both(tokenizer(prompts), trim=False)[0], dim=-1)
        rows.append(F.normalize(feats.mean(0), dim=-1))
    torch.testing.assert_close(fast.weights, torch.stack(rows), atol=1e-5, rtol=1e-4)


def test_amp_bf16_autocasts_the_tower_only_and_agrees_with_fp32(tiny_model, tokenizer):
    names = ["dog", "cat", "grass", "sky", "car"]
    kw = dict(templates="photo1", short_side=64, window=64, stride=32)
    fp32 = SlidingWindowEngine(tiny_model, SegmentationProtocol(**kw))
    bf16 = SlidingWindowEngine(tiny_model, SegmentationProtocol(precision="amp_bf16", **kw))
    clf = build_text_classifier(tiny_model, tokenizer, names, "photo1")  # the text classifier is always fp32
    assert clf.weights.dtype == torch.float32
    image = random_image(70, 100, seed=3)
    a, b = fp32.logits(image, clf), bf16.logits(image, clf)
    assert b.dtype == torch.float32 and not torch.equal(a, b)  # the tower did run in bf16
    assert (a - b).abs().max() < 0.01
    agree = (fp32.predict(image, clf) == bf16.predict(image, clf)).float().mean()
    assert agree > 0.9, agree
    with pytest.raises(ValueError, match="precision must be one of"):
        SegmentationProtocol(precision="bf16", **kw)
