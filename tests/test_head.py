"""The learned head: a residual over its training-free prior, which kinds it answers and how it reads them."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import blob_scene
from vlfss.errors import InputError
from vlfss.modeling.config import HeadConfig, TrainingFreeConfig
from vlfss.modeling.head import apply_prior, pair_similarity_maps
from vlfss.modeling.head_file import load_head, new_head, save_head
from vlfss.segmenter import Segmenter, SegmenterConfig


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
    torch.manual_seed(0)
    head = new_head(tiny_backbone, HeadConfig(prior=TrainingFreeConfig(proto_features="tap0")))
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
    assert loaded.cfg.prior.proto_features == "tap0"
    assert new_head(tiny_backbone).cfg.prior.proto_features == "z"  # None resolves to the model's default


def test_a_head_answers_only_the_input_kinds_it_is_used_for(tiny_backbone, rng, tmp_path):
    """head.use_for: classes given as a kind the head does not answer get the training-free log-odds (the
    upsampled prior), the others the head's own; the choice survives save/load; unknown kinds are refused."""
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


def test_new_head_takes_its_prior_text_settings_from_its_config(tiny_backbone, rng):
    """head.prior's text fields fill the prior's buffers as training-free mode would use them: the model's logit
    scale and background prompts by default, a fixed text_scale / text_threshold when given; so the untrained
    head still equals the training-free model with the same settings."""
    default = new_head(tiny_backbone)
    assert float(default.prior_scale) == pytest.approx(tiny_backbone.logit_scale)
    assert not float(default.prior_has_level) and len(default.prior_bg_text) == 2  # the two background prompts
    tfc = TrainingFreeConfig(text_scale=7.0, text_threshold=0.2)
    head = new_head(tiny_backbone, HeadConfig(prior=tfc))
    assert float(head.prior_scale) == 7.0 and float(head.prior_has_level) == 1.0
    assert float(head.prior_level) == pytest.approx(0.2) and len(head.prior_bg_text) == 0
    seg = Segmenter(tiny_backbone, SegmenterConfig(mode="training-free", training_free=tfc))
    (query,) = seg.encode([blob_scene(rng, 64, 64)[0]], seg.head_variant)
    specs = seg.build_specs(["a cat"], None, seg.head_variant)
    assert torch.allclose(head.prior(query, specs, []), seg.training_free_logits(query, specs, []), atol=1e-5)


def test_bad_prior_settings_name_the_head_key(tiny_backbone):
    for kw, key in (({"metric": "euclid"}, "head.prior.metric"), ({"shrinkage": 0.0}, "head.prior.shrinkage"),
                    ({"proto_features": "tap9"}, "head.prior.proto_features")):
        with pytest.raises(InputError, match=key):
            new_head(tiny_backbone, HeadConfig(prior=TrainingFreeConfig(**kw)))


def test_pair_similarity_maps_channels(tiny_backbone, rng):
    """One channel of text cosine, three per feature level (0 without supports), then the two availability flags;
    as many channels as the decoder expects besides the prior's."""
    head = new_head(tiny_backbone, HeadConfig(prior_input=False))
    seg = Segmenter(tiny_backbone, SegmenterConfig(templates="plain"))
    (query,) = seg.encode([blob_scene(rng)[0]], seg.variant)
    text_only, shots_only = seg.build_specs(["a cat", None], [[], [blob_scene(rng)]], seg.variant)
    levels = len(tiny_backbone.taps) + 1
    for spec, flags in ((text_only, (1.0, 0.0)), (shots_only, (0.0, 1.0))):
        with torch.no_grad():
            maps = pair_similarity_maps(query, spec, head.text_scale)
        assert maps.shape == (head.sim_channels, *query.z.shape[-2:])
        assert [float(maps[-2].mean()), float(maps[-1].mean())] == list(flags)
        assert (maps[1:1 + 3 * levels].abs().sum() == 0) == (spec is text_only)
        assert (maps[0].abs().sum() == 0) == (spec is shots_only)


def test_apply_prior_adds_it_and_answers_declined_kinds_with_it():
    out = torch.ones(1, 2, 4, 4)
    prior = torch.full((1, 2, 2, 2), 3.0)  # upsampled bilinearly: still 3 everywhere
    both = torch.tensor([True, True])
    assert torch.equal(apply_prior(out, prior, both, residual=False), out)
    assert torch.equal(apply_prior(out, prior, both, residual=True), torch.full((1, 2, 4, 4), 4.0))
    mixed = apply_prior(out, prior, torch.tensor([True, False]), residual=True)
    assert torch.equal(mixed[0, 0], torch.full((4, 4), 4.0)) and torch.equal(mixed[0, 1], torch.full((4, 4), 3.0))



def test_class_side_once_per_request_gives_the_same_numbers(tiny_backbone, rng):
    """``SegHead.support_side`` (support prototypes and cells per level, fusion keys) computed once and shared
    over queries gives bit-identical log-odds to the head computing it per call, for every input kind, with
    negatives; and a batch of queries equals the queries one at a time (within float tolerance)."""
    torch.manual_seed(0)
    head = new_head(tiny_backbone, HeadConfig(agnostic_kinds=["shots"]))  # text+shots reads the fusion too
    torch.nn.init.normal_(head.decoder.head.weight)
    seg = Segmenter(tiny_backbone, SegmenterConfig(mode="learned"), head)
    shots = [blob_scene(rng, 64, 64) for _ in range(3)]
    queries = seg.encode([blob_scene(rng, 64, 64)[0] for _ in range(3)], seg.head_variant)
    specs = seg.build_specs(["a cat", "a dog", None], [shots[:2], [], shots[2:]], seg.head_variant)
    negs = seg._encode_pairs([blob_scene(rng, 64, 64)], "negative", seg.head_variant)
    with torch.no_grad():
        side = head.support_side(specs, negs)
        prior = torch.stack([head.prior(q, specs, negs) for q in queries])
        for i, q in enumerate(queries):
            assert torch.equal(head([q], specs, negs, prior[i:i + 1], side), head([q], specs, negs, prior[i:i + 1]))
        batched = head(queries, specs, negs, prior, side)
        one_at_a_time = torch.cat([head([q], specs, negs, prior[i:i + 1], side) for i, q in enumerate(queries)])
    assert torch.allclose(batched, one_at_a_time, atol=1e-5)


def test_segmenter_logits_with_the_prepared_class_side_equal_recomputing_it(tiny_backbone, rng, monkeypatch):
    """``Segmenter.prepare`` keeps the head's class side in the request (computed once, not per query); scoring
    with it is bit-identical to a request without it (the head then recomputes it per query), and ``predict`` on
    several images equals ``segment`` one image at a time."""
    import dataclasses

    from vlfss.modeling import functional as fn

    torch.manual_seed(0)
    head = new_head(tiny_backbone)
    torch.nn.init.normal_(head.decoder.head.weight)
    seg = Segmenter(tiny_backbone, SegmenterConfig(mode="learned", feature_cache_items=0), head)
    shots = [blob_scene(rng, 64, 64) for _ in range(2)]
    images = [blob_scene(rng, 64, 64)[0] for _ in range(3)]
    real, calls = fn.support_map_side, []
    monkeypatch.setattr(fn, "support_map_side", lambda *a: calls.append(1) or real(*a))
    request = seg.prepare(["a cat", None], [shots[:1], shots[1:]])
    seg.predict(images, request)
    assert request.head_support is not None and len(calls) == 2 * (len(tiny_backbone.taps) + 1)  # classes x levels
    monkeypatch.setattr(fn, "support_map_side", real)
    bare = dataclasses.replace(request, head_support=None)
    for q in seg.encode(images, request.variant):
        assert torch.equal(seg.logits(q, request), seg.logits(q, bare))
    together = seg.predict(images, request)
    for img, out in zip(images, together):
        alone = seg.segment(img, texts=["a cat", None], supports=[shots[:1], shots[1:]])
        assert torch.allclose(out.logits, alone.logits, atol=1e-5) and torch.equal(out.labels, alone.labels)
