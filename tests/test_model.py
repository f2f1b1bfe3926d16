"""Segmenter: one code path for text, examples, both, N-way, negatives; sizes; caching; errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import blob_scene
from vlfss.errors import InputError, ModelError
from vlfss.modeling import functional as fn
from vlfss.modeling.head_file import load_head, new_head, read_head_file, save_head
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
    from vlfss.modeling import training_free as tf

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
    img, mask = blob_scene(rng, 64, 64)
    out = seg.segment(img, supports=[(img, mask)])
    pred = out.masks[0].numpy()
    iou = np.logical_and(pred, mask).sum() / np.logical_or(pred, mask).sum()
    assert iou > 0.5


def _grid_iou(logits: torch.Tensor, mask: np.ndarray) -> float:
    m = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(mask)[None].float(), logits.shape[-2:])[0] > 0.5
    p = logits > 0
    return float((p & m).sum()) / max(float((p | m).sum()), 1.0)


@pytest.mark.parametrize("text_kind", ["unrelated", "anti-aligned"])
def test_text_calibrated_on_supports_does_not_spoil_examples(tiny_backbone, rng, text_kind):
    """Text the supports show to be useless (or reversed) must not drag the examples' prediction down."""
    img, mask = blob_scene(rng, 64, 64)
    results = {}
    for calibrate in (True, False):
        seg = Segmenter(tiny_backbone, SegmenterConfig(templates="plain", mode="training-free", input_size=128))
        seg.cfg.training_free.calibrate_text = calibrate
        seg.cfg.training_free.metric = "cosine"  # (Mahalanobis log-odds on the support itself are too sure to drag)
        spec = seg.build_specs(["thing"], [(img, mask)], seg.variant)[0]
        e, m = spec.supports[0]
        fg, _ = fn.prototypes(e.z.unsqueeze(0), m.unsqueeze(0))
        if text_kind == "unrelated":  # a seeded random direction
            text = torch.randn(fg.shape[-1], generator=torch.Generator().manual_seed(0))
        else:
            text = -fg[0]
        spec.text = torch.nn.functional.normalize(text, dim=0)
        both = seg.training_free_logits(e, [spec], [])[0]
        spec_ex = type(spec)(name="thing", text=None, supports=spec.supports)
        examples = seg.training_free_logits(e, [spec_ex], [])[0]
        results[calibrate] = (_grid_iou(both, mask), _grid_iou(examples, mask))
    both_cal, examples = results[True]
    assert both_cal >= examples - 0.05
    if text_kind == "anti-aligned":  # the uncalibrated average follows the reversed text
        assert results[False][0] < examples - 0.2


def test_more_shots_all_used(seg, rng):
    q, _ = blob_scene(rng)
    sup = [blob_scene(rng) for _ in range(5)]
    o1 = seg.segment(q, supports=sup[:1])
    o5 = seg.segment(q, supports=sup)
    assert not torch.allclose(o1.logits, o5.logits)


def test_learned_mode_and_head_round_trip(tiny_backbone, rng, tmp_path):
    torch.manual_seed(0)
    head = new_head(tiny_backbone)
    seg = Segmenter(tiny_backbone, SegmenterConfig(templates="plain", mode="learned"), head)
    q, _ = blob_scene(rng)
    s, sm = blob_scene(rng)
    for kw in ({"texts": ["a cat"]}, {"supports": [(s, sm)]}, {"texts": ["a", "b"], "supports": [[(s, sm)], []]}):
        out = seg.segment(q, **kw)
        _check_output(out, 40, 56, len(kw.get("texts", [1])))
    path = save_head(head, tmp_path / "head.safetensors", tiny_backbone.model_id, seg.variant)
    loaded, variant = load_head(path, tiny_backbone)
    for a, b in zip(head.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    other = new_head(tiny_backbone)
    save_head(other, tmp_path / "other.safetensors", "open_clip:ViT-B-16@openai", "clearclip")
    with pytest.raises(ModelError, match="trained on"):
        load_head(tmp_path / "other.safetensors", tiny_backbone)


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
    ign[0, :] = 255
    seg.segment(q, supports=[(q, ign)])


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


def test_head_output_is_a_residual_over_the_training_free_log_odds(tiny_backbone, rng):
    """An untrained head (its last layer starts at zero) reproduces training-free mode; training corrects it."""
    torch.manual_seed(0)
    head = new_head(tiny_backbone)
    assert head.cfg.residual_prior
    seg = Segmenter(tiny_backbone, SegmenterConfig(mode="learned"), head)
    q, _ = blob_scene(rng, 64, 64)
    s, sm = blob_scene(rng, 64, 64)
    specs = seg.build_specs(["a cat", "a dog"], [[(s, sm)], []], seg.head_variant)
    (query,) = seg.encode([q], seg.head_variant)
    free = seg.training_free_logits(query, specs, [])
    assert torch.allclose(head.prior(query, specs, []), free, atol=1e-5)
    with torch.no_grad():
        out = head([query], specs)[0]
    expected = torch.nn.functional.interpolate(free[None], size=out.shape[-2:], mode="bilinear", align_corners=False)
    assert torch.allclose(out, expected[0], atol=1e-5)


def test_head_prior_matches_prototypes_on_the_features_it_was_built_for(tiny_backbone, rng, tmp_path):
    """A head built for tap prototypes has the training-free model with those prototypes as its prior, and its
    file keeps that choice (whatever the segmenter's own training-free setting is later)."""
    from vlfss.modeling.config import HeadConfig, TrainingFreeConfig

    torch.manual_seed(0)
    head = new_head(tiny_backbone, HeadConfig(prior_proto_features="tap0"))
    tfc = TrainingFreeConfig(proto_features="tap0")
    seg = Segmenter(tiny_backbone, SegmenterConfig(mode="learned", training_free=tfc), head)
    q, _ = blob_scene(rng, 64, 64)
    s, sm = blob_scene(rng, 64, 64)
    specs = seg.build_specs([None], [[(s, sm)]], seg.head_variant)
    (query,) = seg.encode([q], seg.head_variant)
    assert torch.allclose(head.prior(query, specs, []), seg.training_free_logits(query, specs, []), atol=1e-5)
    on_z = Segmenter(tiny_backbone, SegmenterConfig(mode="training-free")).training_free_logits(query, specs, [])
    assert not torch.allclose(head.prior(query, specs, []), on_z, atol=1e-3)
    loaded, _ = load_head(save_head(head, tmp_path / "h.safetensors", tiny_backbone.model_id, "plain"), tiny_backbone)
    assert loaded.cfg.prior_proto_features == "tap0"
    assert new_head(tiny_backbone).cfg.prior_proto_features == "z"  # None resolves to the model's default


def test_a_head_answers_only_the_input_kinds_it_is_used_for(tiny_backbone, rng, tmp_path):
    """head.use_for: classes given as a kind the head does not answer get the training-free log-odds (the
    upsampled prior), the others the head's own; the choice survives save/load; unknown kinds are refused."""
    from vlfss.errors import InputError
    from vlfss.modeling.config import HeadConfig

    torch.manual_seed(0)
    head = new_head(tiny_backbone, HeadConfig(use_for=["text", "text+shots"]))
    torch.nn.init.normal_(head.decoder.head.weight)  # a trained-looking last layer
    seg = Segmenter(tiny_backbone, SegmenterConfig(mode="learned"), head)
    q, _ = blob_scene(rng, 64, 64)
    s, sm = blob_scene(rng, 64, 64)
    specs = seg.build_specs(["a cat", None], [[], [(s, sm)]], seg.head_variant)  # text only, examples only
    (query,) = seg.encode([q], seg.head_variant)
    with torch.no_grad():
        out = head([query], specs)[0]
        prior = torch.nn.functional.interpolate(head.prior(query, specs, [])[None], size=out.shape[-2:],
                                                mode="bilinear", align_corners=False)[0]
    assert torch.allclose(out[1], prior[1], atol=1e-5)  # examples only: training-free
    assert not torch.allclose(out[0], prior[0], atol=1e-3)  # text: the head's correction
    loaded, _ = load_head(save_head(head, tmp_path / "h.safetensors", tiny_backbone.model_id, "plain"), tiny_backbone)
    assert loaded.cfg.use_for == ["text", "text+shots"]
    free = Segmenter(tiny_backbone, SegmenterConfig(mode="training-free"))
    calls = []
    real_prior = head.prior
    head.prior = lambda *a: calls.append(1) or real_prior(*a)  # type: ignore[method-assign]
    learned = seg.segment(q, supports=[(s, sm)])  # a kind the head declines: exactly the training-free answer
    head.prior = real_prior  # type: ignore[method-assign]
    assert len(calls) == 1  # the prior is computed once per query, not once for the head and again for the answer
    assert torch.allclose(learned.logits, free.segment(q, supports=[(s, sm)]).logits, atol=1e-5)
    assert not torch.allclose(seg.segment(q, texts=["a cat"]).logits, free.segment(q, texts=["a cat"]).logits,
                              atol=1e-3)
    with pytest.raises(InputError, match="head.use_for"):
        new_head(tiny_backbone, HeadConfig(use_for=["pictures"]))


def test_agnostic_kinds_reach_the_decoder_only_through_similarity_maps(tiny_backbone, rng):
    """head.agnostic_kinds: an examples-only class never touches the fusion module or the encoder skips (nothing
    class-specific to memorise on base classes), while a text class does; unknown kinds are refused."""
    from vlfss.errors import InputError
    from vlfss.modeling.config import HeadConfig

    torch.manual_seed(0)
    head = new_head(tiny_backbone, HeadConfig(agnostic_kinds=["shots"]))
    torch.nn.init.normal_(head.decoder.head.weight)
    seg = Segmenter(tiny_backbone, SegmenterConfig(mode="learned"), head)
    q, _ = blob_scene(rng, 64, 64)
    s, sm = blob_scene(rng, 64, 64)
    (query,) = seg.encode([q], seg.head_variant)

    def grads(texts, supports):
        head.zero_grad(set_to_none=True)
        head([query], seg.build_specs(texts, supports, seg.head_variant)).square().sum().backward()
        fusion = [p.grad for p in head.fusion.parameters()]
        skips = [p.grad for p in head.decoder.tap_proj.parameters()]
        return [g for g in fusion + skips if g is not None and g.abs().sum() > 0]

    assert grads([None], [[(s, sm)]]) == []  # examples only: class-agnostic
    assert grads(["a cat"], [[(s, sm)]]) != []  # text+examples: raw features too
    assert head.decoder.stage1[0][0].weight.grad.abs().sum() > 0  # the decoder itself still learns
    with torch.no_grad():  # the fusion runs for the raw pairs only; each class's answer is its own
        both = head([query], seg.build_specs(["a cat", None], [[], [(s, sm)]], seg.head_variant))[0]
        alone = [head([query], seg.build_specs(t, sup, seg.head_variant))[0, 0]
                 for t, sup in ((["a cat"], None), ([None], [[(s, sm)]]))]
    assert all(torch.allclose(both[i], alone[i], atol=1e-4) for i in range(2))
    with pytest.raises(InputError, match="head.agnostic_kinds"):
        new_head(tiny_backbone, HeadConfig(agnostic_kinds=["pixels"]))


def test_the_decoder_reads_the_prior_it_corrects(tiny_backbone, rng):
    """head.prior_input: the correction depends on the training-free log-odds (not only on features), so the
    head can learn where the prior is wrong; without it the correction ignores the prior."""
    from vlfss.modeling.config import HeadConfig

    q, _ = blob_scene(rng, 64, 64)
    s, sm = blob_scene(rng, 64, 64)
    for prior_input in (True, False):
        torch.manual_seed(0)
        head = new_head(tiny_backbone, HeadConfig(prior_input=prior_input))
        torch.nn.init.normal_(head.decoder.head.weight)
        seg = Segmenter(tiny_backbone, SegmenterConfig(mode="learned"), head)
        specs = seg.build_specs([None], [[(s, sm)]], seg.head_variant)
        (query,) = seg.encode([q], seg.head_variant)
        with torch.no_grad():
            prior = head.prior(query, specs, [])[None]
            corr = [head([query], specs, prior=p) - torch.nn.functional.interpolate(
                p, size=(4 * p.shape[-2], 4 * p.shape[-1]), mode="bilinear", align_corners=False)
                for p in (prior, prior + 3.0)]
        assert torch.allclose(corr[0], corr[1], atol=1e-5) != prior_input


def test_head_saved_without_the_residual_prior_loads_as_before(tiny_backbone, tmp_path):
    import json

    from safetensors.torch import save_file

    from vlfss.modeling.config import HeadConfig

    torch.manual_seed(0)
    head = new_head(tiny_backbone, HeadConfig(prior_input=False))  # no prior channel: as old files were shaped
    path = save_head(head, tmp_path / "h.safetensors", tiny_backbone.model_id, "plain")
    meta, state = read_head_file(path)
    for key in ("residual_prior", "prior_proto_features", "prior_cell_norm", "prior_metric", "prior_shrinkage",
                "prior_mahalanobis_scale", "prior_input", "agnostic_kinds"):
        del meta["head"][key]
    old = {k: v for k, v in state.items() if not k.startswith("prior_")}
    save_file(old, str(tmp_path / "old.safetensors"), metadata={"vlfss": json.dumps(meta)})
    loaded, _ = load_head(tmp_path / "old.safetensors", tiny_backbone)
    assert not loaded.cfg.residual_prior and loaded.cfg.prior_proto_features == "z"
    assert not loaded.cfg.prior_cell_norm  # its prior averaged raw cells, as it was trained with
    assert loaded.cfg.prior_metric == "cosine"  # ... and compared them by cosine
    assert not loaded.cfg.prior_input and loaded.cfg.agnostic_kinds == []  # ... and saw every kind's features
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in old.items())
    broken = dict(old)
    broken.pop("text_scale")
    save_file(broken, str(tmp_path / "broken.safetensors"), metadata={"vlfss": json.dumps(meta)})
    with pytest.raises(ModelError, match="do not fit"):
        load_head(tmp_path / "broken.safetensors", tiny_backbone)


def test_kmeans_background_prototypes_separate_what_one_mean_cannot():
    """Background of two kinds whose mean points at the object: one mean prototype cannot tell the object from
    the background by cosine; k-means background prototypes can (training_free.num_bg_prototypes)."""
    from vlfss.modeling.config import TrainingFreeConfig
    from vlfss.modeling.training_free import training_free_logits
    from vlfss.modeling.types import ClassSpec, Encoded

    a, b, c = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    kind = torch.zeros(4, 4, dtype=torch.long)
    kind[1:3, 1:3] = 0  # object in the middle
    kind[:, :1], kind[:, 3:] = 1, 2  # two background kinds left and right
    kind[0, 1:3], kind[3, 1:3] = 1, 2
    z = torch.stack([a, b, c])[kind].permute(2, 0, 1)  # 3 x 4 x 4
    mask = (kind == 0).to(torch.uint8).repeat_interleave(4, 0).repeat_interleave(4, 1)  # 16 x 16
    enc = Encoded(taps=[], z=z, rgb=torch.zeros(3, 16, 16), size=(16, 16))
    spec = ClassSpec(name="thing", text=None, supports=[(enc, mask)])
    for k, separates in ((1, False), (2, True)):
        cfg = TrainingFreeConfig(num_bg_prototypes=k, metric="cosine")
        logits = training_free_logits(enc, [spec], [], cfg, 1.0, 0.0)[0]
        fg_min, bg_max = float(logits[kind == 0].min()), float(logits[kind != 0].max())
        assert (fg_min > 0 > bg_max) == separates, (k, fg_min, bg_max)


def test_prototypes_match_on_the_chosen_encoder_tap():
    """training_free.proto_features picks the features prototypes match on: where the text-aligned z cannot tell
    object from background but an encoder tap can, only the tap separates them; a tap the backbone lacks is an
    error naming the option."""
    from vlfss.errors import InputError
    from vlfss.modeling.config import TrainingFreeConfig
    from vlfss.modeling.training_free import check_proto_features, training_free_logits
    from vlfss.modeling.types import ClassSpec, Encoded

    obj = torch.zeros(4, 4, dtype=torch.bool)
    obj[1:3, 1:3] = True
    z = torch.ones(3, 4, 4)  # every cell the same direction: no prototype evidence
    tap = torch.stack([obj.float(), (~obj).float()])  # 2 x 4 x 4: object and background orthogonal
    mask = obj.to(torch.uint8).repeat_interleave(4, 0).repeat_interleave(4, 1)
    enc = Encoded(taps=[tap], z=z, rgb=torch.zeros(3, 16, 16), size=(16, 16))
    spec = ClassSpec(name="thing", text=None, supports=[(enc, mask)])
    on_z = training_free_logits(enc, [spec], [], TrainingFreeConfig(proto_features="z"), 1.0, 0.0)[0]
    on_tap = training_free_logits(enc, [spec], [], TrainingFreeConfig(proto_features="tap0"), 1.0, 0.0)[0]
    assert float(on_z.abs().max()) < 1e-4
    assert float(on_tap[obj].min()) > 0 > float(on_tap[~obj].max())
    for bad in ("tap1", "layer2", "tap"):
        with pytest.raises(InputError, match="proto_features"):
            check_proto_features(bad, num_taps=1)


def test_proto_features_default_comes_from_the_model_and_bad_values_name_the_key(tiny_backbone):
    """None resolves to the backbone's default (z unless the model says otherwise) in a copy of the config;
    the embedded tiny CLIP matches prototypes on its second block; a tap the model lacks is refused up front."""
    from vlfss.errors import InputError
    from vlfss.modeling.backbones import build_backbone
    from vlfss.modeling.config import TrainingFreeConfig
    from vlfss.segmenter import Segmenter, SegmenterConfig

    cfg = SegmenterConfig()
    assert Segmenter(tiny_backbone, cfg).cfg.training_free.proto_features == "z"
    assert cfg.training_free.proto_features is None  # the caller's config is not mutated
    tiny = build_backbone("vlfss-tiny")
    assert tiny.taps[0] == 1 and Segmenter(tiny, SegmenterConfig()).cfg.training_free.proto_features == "tap0"
    bad = SegmenterConfig(training_free=TrainingFreeConfig(proto_features=f"tap{len(tiny_backbone.taps)}"))
    with pytest.raises(InputError, match="training_free.proto_features"):
        Segmenter(tiny_backbone, bad)


def test_shots_average_into_one_class_prototype_unless_max_is_asked():
    """shot_pooling="mean" matches the mean of the shots' foreground prototypes (PANet); "max" the best shot."""
    from vlfss.modeling.config import TrainingFreeConfig
    from vlfss.modeling.training_free import training_free_logits
    from vlfss.modeling.types import ClassSpec, Encoded

    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    bg = torch.tensor([0.0, 0.0, 1.0])
    obj = torch.zeros(4, 4, dtype=torch.bool)
    obj[1:3, 1:3] = True
    mask = obj.to(torch.uint8).repeat_interleave(4, 0).repeat_interleave(4, 1)

    def enc(v: torch.Tensor) -> Encoded:
        z = torch.where(obj, v[:, None, None], bg[:, None, None])
        return Encoded(taps=[], z=z, rgb=torch.zeros(3, 16, 16), size=(16, 16))

    spec = ClassSpec(name="thing", text=None, supports=[(enc(a), mask), (enc(b), mask)])
    query = enc(a)
    cfgs = {p: TrainingFreeConfig(shot_pooling=p, metric="cosine") for p in ("mean", "max")}
    mean = training_free_logits(query, [spec], [], cfgs["mean"], 1.0, 0.0)[0]
    best = training_free_logits(query, [spec], [], cfgs["max"], 1.0, 0.0)[0]
    t = TrainingFreeConfig().proto_temperature
    assert float(best[obj].mean()) == pytest.approx(1.0 / t, rel=1e-4)  # cos 1 to shot a, 0 to the background
    assert float(mean[obj].mean()) == pytest.approx(2 ** -0.5 / t, rel=1e-4)  # cos to (a + b) / 2


def test_cell_norm_lets_every_foreground_cell_vote_equally():
    """With training_free.cell_norm a prototype is the mean of unit cells: one high-norm cell does not pull it
    away from the three cells that look like the query's object; without it, the norm decides."""
    from vlfss.modeling.config import TrainingFreeConfig
    from vlfss.modeling.training_free import training_free_logits
    from vlfss.modeling.types import ClassSpec, Encoded

    a, b, c = torch.eye(3)
    obj = torch.zeros(4, 4, dtype=torch.bool)
    obj[1:3, 1:3] = True
    z = torch.where(obj, b[:, None, None], c[:, None, None]).clone()
    z[:, 1, 1] = 10 * a  # one loud foreground cell of another look
    mask = obj.to(torch.uint8).repeat_interleave(4, 0).repeat_interleave(4, 1)
    spec = ClassSpec(name="thing", text=None, supports=[(Encoded(taps=[], z=z, rgb=torch.zeros(3, 16, 16),
                                                                 size=(16, 16)), mask)])
    qz = torch.where(obj, b[:, None, None], c[:, None, None])
    query = Encoded(taps=[], z=qz, rgb=torch.zeros(3, 16, 16), size=(16, 16))
    t = TrainingFreeConfig().proto_temperature
    normed = training_free_logits(query, [spec], [], TrainingFreeConfig(cell_norm=True, metric="cosine"), 1.0, 0.0)[0]
    raw = training_free_logits(query, [spec], [], TrainingFreeConfig(cell_norm=False, metric="cosine"), 1.0, 0.0)[0]
    assert float(normed[obj].mean()) == pytest.approx(3 / 10 ** 0.5 / t, rel=1e-4)  # cos(b, (a + 3b) / 4)
    assert float(raw[obj].mean()) == pytest.approx(3 / 109 ** 0.5 / t, rel=1e-4)  # cos(b, (10a + 3b) / 4)


def test_mahalanobis_prototypes_discount_the_directions_an_object_varies_in():
    """Object and background differ a little along a direction both hold still, and a lot, but with wide
    scatter, along another: cosine follows the wide direction and labels the query backwards; the Mahalanobis
    metric under the supports' covariance follows the steady one and gets both regions right."""
    from vlfss.modeling.config import TrainingFreeConfig
    from vlfss.modeling.training_free import training_free_logits
    from vlfss.modeling.types import ClassSpec, Encoded

    obj = torch.zeros(4, 4, dtype=torch.bool)
    obj[1:3, 1:3] = True
    swing = torch.tensor([[2.0, -2.0] * 2, [-2.0, 2.0] * 2] * 2)  # +-2 scatter along dim 0, mean 0 in each region
    sz = torch.stack([torch.where(obj, 1.0, -1.0) + swing, torch.where(obj, 0.5, -0.5), torch.ones(4, 4)])
    qz = torch.stack([torch.where(obj, -1.5, 1.5), torch.where(obj, 0.5, -0.5), torch.ones(4, 4)])
    mask = obj.to(torch.uint8).repeat_interleave(4, 0).repeat_interleave(4, 1)
    enc = lambda z: Encoded(taps=[], z=z, rgb=torch.zeros(3, 16, 16), size=(16, 16))  # noqa: E731
    spec = ClassSpec(name="thing", text=None, supports=[(enc(sz), mask)])
    labels = {}
    for metric in ("cosine", "mahalanobis"):
        cfg = TrainingFreeConfig(metric=metric, shrinkage=0.1, cell_norm=False)
        labels[metric] = training_free_logits(enc(qz), [spec], [], cfg, 1.0, 0.0)[0] > 0
    assert torch.equal(labels["mahalanobis"], obj)
    assert torch.equal(labels["cosine"], ~obj)


def test_bad_metric_or_shrinkage_names_the_key(tiny_backbone):
    from vlfss.errors import InputError
    from vlfss.modeling.config import HeadConfig, TrainingFreeConfig

    for kw, key in (({"metric": "euclid"}, "training_free.metric"), ({"shrinkage": 0.0}, "training_free.shrinkage"),
                    ({"shrinkage": 1.5}, "training_free.shrinkage"),
                    ({"mahalanobis_scale": 0.0}, "training_free.mahalanobis_scale")):
        with pytest.raises(InputError, match=key):
            Segmenter(tiny_backbone, SegmenterConfig(training_free=TrainingFreeConfig(**kw)))
    with pytest.raises(InputError, match="head.prior_metric"):
        new_head(tiny_backbone, HeadConfig(prior_metric="euclid"))


def test_bad_shot_pooling_names_the_key(tiny_backbone):
    from vlfss.errors import InputError
    from vlfss.modeling.config import HeadConfig, TrainingFreeConfig

    with pytest.raises(InputError, match="training_free.shot_pooling"):
        Segmenter(tiny_backbone, SegmenterConfig(training_free=TrainingFreeConfig(shot_pooling="median")))
    with pytest.raises(InputError, match="head.prior_shot_pooling"):
        new_head(tiny_backbone, HeadConfig(prior_shot_pooling="median"))
