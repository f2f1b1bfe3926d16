"""Segmenter: one code path for text, examples, both, N-way, negatives; sizes; caching; input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import blob_scene
from vlfss.config import from_dict
from vlfss.errors import ConfigError, InputError, ModelError
from vlfss.modeling import functional as fn
from vlfss.modeling import training_free as tf
from vlfss.modeling.backbones import build_backbone
from vlfss.modeling.config import TrainingFreeConfig
from vlfss.modeling.head_file import new_head
from vlfss.segmenter import Segmenter, SegmenterConfig


@pytest.fixture()
def seg(tiny_backbone):
    return Segmenter(tiny_backbone, SegmenterConfig(templates="plain"))


def _check_output(out, h, w, n):
    assert out.probs.shape == (n + 1, h, w) and out.labels.shape == (h, w)
    assert out.masks.shape == (n, h, w) and out.masks.dtype == torch.bool
    assert torch.allclose(out.probs.sum(0), torch.ones(h, w), atol=1e-5)
    assert ((out.entropy >= 0) & (out.entropy <= 1 + 1e-6)).all()
    assert torch.equal(out.confidence, out.probs.max(0).values)
    for i in range(n):
        assert torch.equal(out.masks[i], out.labels == i + 1)


def test_text_only_examples_only_both(seg, rng):
    q, _ = blob_scene(rng, 40, 56)
    s, sm = blob_scene(rng, 30, 30)
    for kwargs in ({"texts": ["a cat"]}, {"supports": [(s, sm)]}, {"texts": ["a cat"], "supports": [(s, sm)]}):
        _check_output(seg.segment(q, **kwargs), 40, 56, 1)


def test_nway_with_mixed_inputs_and_negatives(seg, rng):
    q, _ = blob_scene(rng)
    a, am = blob_scene(rng)
    b, bm = blob_scene(rng)
    n, nm = blob_scene(rng)
    out = seg.segment(q, texts=["cat", "dog", None], supports=[[(a, am)], [], [(b, bm), (a, am)]],
                      negatives=[(n, nm), "grass"])
    _check_output(out, 40, 56, 3)
    assert out.class_names == ["cat", "dog", "class3"]


def test_batch_of_different_sizes_returns_original_sizes(seg, rng):
    imgs = [blob_scene(rng, 40, 56)[0], blob_scene(rng, 64, 20)[0], blob_scene(rng, 33, 33)[0]]
    outs = seg.segment(imgs, texts=["a cat"])
    assert [tuple(o.labels.shape) for o in outs] == [(40, 56), (64, 20), (33, 33)]


def test_support_encoded_once_across_queries(seg, rng):
    s, sm = blob_scene(rng)
    queries = [blob_scene(rng)[0] for _ in range(3)]
    before = seg.image_encodes
    for q in queries:
        seg.segment(q, texts=["a cat"], supports=[(s, sm)])
    assert seg.image_encodes - before == 1 + 3
    seg.segment(queries[0], texts=["a cat"], supports=[(s, sm)])
    assert seg.image_encodes - before == 4  # all cached now


def test_support_side_scored_once_per_request_for_many_queries(tiny_backbone, rng, monkeypatch):
    """Segmenting several images against the same supports computes the supports' covariance, prototypes and
    text fits once, in training-free and in learned mode, and gives the same answers as one image at a time."""
    s, sm = blob_scene(rng)
    queries = [blob_scene(rng)[0] for _ in range(3)]
    torch.manual_seed(0)
    head = new_head(tiny_backbone)
    torch.nn.init.normal_(head.decoder.head.weight)
    real = tf.support_state
    calls: list[str] = []
    for mode in ("training-free", "learned"):
        seg = Segmenter(tiny_backbone, SegmenterConfig(templates="plain", mode=mode), head)
        monkeypatch.setattr(tf, "support_state", lambda *a: calls.append(mode) or real(*a))  # noqa: B023
        many = seg.segment(queries, texts=["a cat"], supports=[(s, sm)])
        assert calls.count(mode) == 1, mode
        monkeypatch.setattr(tf, "support_state", real)
        for q, out in zip(queries, many):
            assert torch.allclose(out.logits, seg.segment(q, texts=["a cat"], supports=[(s, sm)]).logits, atol=1e-5)


def test_one_shot_finds_the_support_object_on_identical_image(seg, rng):
    """A flat-coloured object on dark noise, its own image as the support: even random CLIP weights keep colour,
    so the mask must be closer to perfect (IoU 1) than to calling everything the object (IoU = its area)."""
    img, mask = blob_scene(rng, 64, 64)
    out = seg.segment(img, supports=[(img, mask)])
    pred = out.masks[0].numpy()
    iou = np.logical_and(pred, mask).sum() / np.logical_or(pred, mask).sum()
    assert iou > (1 + mask.mean()) / 2


def test_more_shots_all_used(seg, rng):
    q, _ = blob_scene(rng)
    sup = [blob_scene(rng) for _ in range(5)]
    o1 = seg.segment(q, supports=sup[:1])
    o5 = seg.segment(q, supports=sup)
    assert not torch.allclose(o1.logits, o5.logits)


def test_learned_mode_without_head_is_clear_error(seg, rng):
    with pytest.raises(ModelError, match="head"):
        seg.segment(blob_scene(rng)[0], texts=["a"], mode="learned")


@pytest.mark.parametrize("bad_mask, match", [
    (np.zeros((10, 10), np.uint8), "differs from its image"),
    (np.full((40, 56), 7, np.uint8), "not binary"),
    (np.zeros((40, 56), np.uint8), "no foreground"),
])
def test_bad_support_masks(seg, rng, bad_mask, match):
    q, _ = blob_scene(rng)
    with pytest.raises(InputError, match=match):
        seg.segment(q, supports=[(q, bad_mask)])


def test_mask_encodings_accepted(seg, rng):
    q, m = blob_scene(rng)
    base = seg.segment(q, supports=[(q, m)]).logits
    for enc in (m * 255, np.where(m == 1, 1, 0).astype(bool), np.dstack([m * 255] * 3)):
        assert torch.allclose(seg.segment(q, supports=[(q, enc)]).logits, base, atol=1e-4)
    ign = m.copy()
    ign[0, :] = 255  # background pixels marked ignore leave the background prototype: another answer, still finite
    ignored = seg.segment(q, supports=[(q, ign)]).logits
    assert torch.isfinite(ignored).all() and not torch.allclose(ignored, base, atol=1e-4)


def test_nothing_to_segment_and_mismatched_counts(seg, rng):
    q, m = blob_scene(rng)
    with pytest.raises(InputError, match="nothing to segment"):
        seg.segment(q)
    with pytest.raises(InputError, match="one support list per text"):
        seg.segment(q, texts=["a", "b", "c"], supports=[[(q, m)], [(q, m)]])


def test_image_modes_converted(seg, tmp_path, rng):
    from PIL import Image

    img, _ = blob_scene(rng)
    paths = {
        "rgba": Image.fromarray(np.dstack([img, np.full(img.shape[:2], 200, np.uint8)]), "RGBA"),
        "gray": Image.fromarray(img[..., 0], "L"),
        "pal": Image.fromarray(img).convert("P"),
        "i16": Image.fromarray(img[..., 0].astype(np.uint16) * 256),
    }
    for name, im in paths.items():
        p = tmp_path / f"{name}.png"
        im.save(p)
        assert seg.segment(str(p), texts=["a cat"]).labels.shape == (40, 56)


def test_proto_features_default_comes_from_the_model_and_bad_values_name_the_key(tiny_backbone):
    """None resolves to the backbone's default (z unless the model says otherwise) in a copy of the config;
    the embedded tiny CLIP matches prototypes on its second block; a tap the model lacks is refused up front."""
    cfg = SegmenterConfig()
    assert Segmenter(tiny_backbone, cfg).cfg.training_free.proto_features == "z"
    assert cfg.training_free.proto_features is None  # the caller's config is not mutated
    tiny = build_backbone("vlfss-tiny")
    assert tiny.taps[0] == 1 and Segmenter(tiny, SegmenterConfig()).cfg.training_free.proto_features == "tap0"
    bad = SegmenterConfig(training_free=TrainingFreeConfig(proto_features=f"tap{len(tiny_backbone.taps)}"))
    with pytest.raises(InputError, match="training_free.proto_features"):
        Segmenter(tiny_backbone, bad)




@pytest.mark.parametrize("kw, key", [({"metric": "euclid"}, "training_free.metric"),
                                     ({"shrinkage": 1.5}, "training_free.shrinkage"),
                                     ({"mahalanobis_scale": 0.0}, "training_free.mahalanobis_scale")])
def test_bad_training_free_settings_are_refused_when_the_segmenter_is_built(tiny_backbone, kw, key):
    with pytest.raises(InputError, match=key):
        Segmenter(tiny_backbone, SegmenterConfig(training_free=TrainingFreeConfig(**kw)))


@pytest.mark.parametrize("key", ["shot_pooling", "cell_norm"])
def test_removed_training_free_keys_are_named_as_unknown(key):
    """Settings pruned for losing their ablations (docs/pruned.md) fail loudly in an old config, not silently."""
    with pytest.raises(ConfigError, match=f"training_free.{key}"):
        from_dict(SegmenterConfig, {"training_free": {key: "max"}})


def test_text_background_follows_threshold_then_model_bias_then_prompts(seg, rng):
    """The text background level: training_free.text_threshold when set, else background prompts for a model
    without a SigLIP bias (max cosine to their embeddings, per query cell)."""
    (query,) = seg.encode([blob_scene(rng)[0]])
    z = query.z.unsqueeze(0)
    prompts = seg.text_embeddings(seg.cfg.training_free.background_prompts)
    assert torch.allclose(seg._text_background(z, None), fn.cosine_map(z, prompts).max(1).values[0], atol=1e-5)
    seg.cfg.training_free.text_threshold = 0.25
    assert seg._text_background(z, None) == 0.25
    assert tf.text_level(None, -5.0, 10.0) == 0.5  # a SigLIP model: where sigmoid(10 cos - 5) = 1/2


def test_output_labels_are_the_first_maximum_as_argmax():
    """``make_output`` takes labels and confidence from one ``max`` over classes: the same labels as
    ``argmax`` (ties to the lower label), the same confidence as the max probability."""
    from vlfss.modeling.types import make_output

    torch.manual_seed(0)
    logits = torch.randn(4, 9, 11)
    logits[1, :3] = logits[2, :3] = logits[0, :3] + 1.0  # exact ties between classes 1 and 2
    logits[3, :3] = logits[0, :3]
    logits[:, 4] = 0.0  # all four tied
    out = make_output(logits, ["a", "b", "c"])
    probs = logits.softmax(0)
    assert torch.equal(out.labels, probs.argmax(0)) and torch.equal(out.confidence, probs.max(0).values)
    assert (out.labels[:3] == 1).all() and (out.labels[4] == 0).all()
