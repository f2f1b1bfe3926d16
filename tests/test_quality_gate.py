"""The embedded model's quality gate and robust fallback: sharp images keep their features, degraded ones are
encoded by the robust tower, and nothing else changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlfss.data.perturb import apply_image, parse_perturbation
from vlfss.data.synthetic import generate_scene
from vlfss.errors import ModelError
from vlfss.modeling.backbones import build_backbone
from vlfss.modeling.backbones.tiny import GATE
from vlfss.modeling.config import SegmenterConfig
from vlfss.modeling.fallback import dense_with_fallback
from vlfss.modeling.quality_gate import QualityGate, gate_features, load_gate
from vlfss.segmenter import Segmenter


def _scenes(n: int = 3) -> list[np.ndarray]:
    return [generate_scene(12345, i).image for i in range(n)]  # a world seed no split uses


def _blur(image: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    return apply_image(parse_perturbation(f"blur:{sigma}"), image)


@pytest.fixture(scope="module")
def segs() -> tuple[Segmenter, Segmenter]:
    """(gated, flagged images straight to the robust tower; sharp tower only). The deblur is tested in
    test_restore.py, the average over turns and mirrors in test_symmetry.py."""
    return (Segmenter.from_config(SegmenterConfig(mode="training-free", deblur=False, robust_symmetry="none")),
            Segmenter.from_config(SegmenterConfig(mode="training-free", robust_fallback=False)))


def test_gate_features_are_each_channels_mean_and_spread():
    taps = [torch.randn(2, 4, 3, 5), torch.randn(2, 6, 3, 5)]
    f = gate_features(taps)
    assert f.shape == (2, 2 * (4 + 6))
    assert torch.allclose(f[1, :4], taps[0][1].flatten(1).mean(1))
    assert torch.allclose(f[1, 4:8], taps[0][1].flatten(1).std(1))


def test_gate_saves_and_loads_and_rejects_other_files(tmp_path):
    g = QualityGate(torch.zeros(4), torch.ones(4), torch.tensor([[1.0, 0, 0, 0]]), torch.zeros(1), torch.ones(1),
                    -0.5, 0.25, "m|taps=1")
    g.save(tmp_path / "g.safetensors")
    back = load_gate(tmp_path / "g.safetensors")
    assert (back.bias, back.threshold, back.backbone) == (-0.5, 0.25, "m|taps=1") and back.digest
    taps = [torch.tensor([[[[0.0, 2.0]], [[0.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]]])]  # 2 images, 2 channels
    assert back.flag(taps).tolist() == [True, False]  # score = gelu(mean of channel 0) - 0.5: 0.34 and -0.5
    (tmp_path / "bad.safetensors").write_bytes(b"not a gate")
    with pytest.raises(ModelError, match="quality gate .*bad.safetensors does not load"):
        load_gate(tmp_path / "bad.safetensors")
    with pytest.raises(ModelError, match="reads 4 features, got 6"):
        back.score([torch.randn(1, 3, 2, 2)])


def test_shipped_gate_fits_the_embedded_model():
    backbone = build_backbone("vlfss-tiny")
    gate = load_gate(GATE)
    assert gate.backbone == backbone.gate_id()
    fb = backbone.robust_fallback()
    assert fb is not None and fb[0].model_id.startswith("vlfss-tiny-robust@")
    assert fb[2] is not None and fb[2].backbone == gate.backbone  # the restorer, fitted to the same taps


def test_sharp_images_keep_their_features_bit_for_bit(segs):
    gated, sharp = segs
    images = _scenes()
    a, b = gated.encode(images), sharp.encode(images)
    for x, y in zip(a, b):
        assert torch.equal(x.z, y.z) and all(torch.equal(s, t) for s, t in zip(x.taps, y.taps))
    assert gated.degraded_encodes == 0


def test_degraded_images_are_encoded_by_the_robust_tower(segs):
    gated, sharp = segs
    clean, blurred = _scenes(1)[0], _blur(_scenes(1)[0])
    before = gated.degraded_encodes
    enc = gated.encode([clean, blurred])  # one batch: the gate picks per image
    assert gated.degraded_encodes == before + 1
    x = gated._to_input(blurred, (96, 96))[None]
    with torch.inference_mode():
        robust = gated.fallback.dense(x, gated.variant)
        plain = sharp.backbone.dense(x, sharp.variant)
    assert torch.allclose(enc[1].z, robust.z[0], atol=1e-5)
    assert not torch.allclose(enc[1].z, plain.z[0], atol=1e-3)
    assert torch.equal(enc[0].z, sharp.encode([clean])[0].z)
    gated.encode([blurred])  # cached: not encoded again
    assert gated.degraded_encodes == before + 1


def test_merge_keeps_unflagged_rows():
    backbone = build_backbone("vlfss-tiny")
    robust, gate, _ = backbone.robust_fallback()
    seg = Segmenter(backbone, SegmenterConfig(robust_fallback=False))
    batch = torch.stack([seg._to_input(_scenes(1)[0], (96, 96)), seg._to_input(_blur(_scenes(1)[0]), (96, 96))])
    with torch.inference_mode():
        feats, flags, sigmas = dense_with_fallback(backbone, robust, gate, batch, "plain")  # no restorer
        sharp = backbone.dense(batch, "plain")
    assert flags.tolist() == [False, True] and sigmas.tolist() == [0.0, 0.0]
    assert torch.equal(feats.z[0], sharp.z[0]) and not torch.equal(feats.z[1], sharp.z[1])


def test_no_fallback_when_off_or_for_other_weights_or_taps(tmp_path, monkeypatch):
    assert Segmenter.from_config(SegmenterConfig(robust_fallback=False)).fallback is None
    assert build_backbone("vlfss-tiny", taps=(1, 2, 4)).robust_fallback() is None  # the gate reads taps 1, 3, 4
    assert build_backbone("vlfss-tiny-robust").robust_fallback() is None
    gated = Segmenter.from_config(SegmenterConfig())
    off = Segmenter.from_config(SegmenterConfig(robust_fallback=False))
    assert gated.feature_id != off.feature_id  # cached features of one never answer the other


def test_shipped_heads_still_load_on_the_gated_model():
    seg = Segmenter.from_config(SegmenterConfig(mode="learned"))
    assert seg.head is not None and seg.fallback is not None
    out = seg.segment(_blur(_scenes(1)[0]), texts=["stripes"])
    assert out.probs.shape[-2:] == (96, 96)


def test_eval_counts_the_images_sent_to_the_robust_tower(tmp_path, segs):
    from vlfss.data import build_benchmark
    from vlfss.data.synthetic_store import materialize_synthetic
    from vlfss.evaluation.harness import evaluate

    materialize_synthetic(tmp_path, "test", 40, 0, "hf", 96)
    bench = build_benchmark("synthetic", tmp_path, "test", 0, n_images=40)
    kw = dict(folds=[0], shots=[1], episodes=3, modes="training-free", baselines=False, progress=False)
    gated = Segmenter.from_config(SegmenterConfig(mode="training-free"))
    clean = evaluate(gated, bench, **kw)
    assert clean.cache["degraded_encodes"] == clean.cache["restored_encodes"] == 0  # sharp: the sharp tower only
    res = evaluate(Segmenter.from_config(SegmenterConfig(mode="training-free")), bench, perturb=("blur:1.5",), **kw)
    assert 0 < res.cache["degraded_encodes"] <= res.cache["image_encodes"] // 2  # blurred copies only
    assert res.cache["restored_encodes"] <= res.cache["degraded_encodes"]
    assert [r["miou"] for r in res.rows if r["perturb"] == "clean"] == [r["miou"] for r in clean.rows]


def test_outputs_say_which_tower_encoded_the_image(segs, tiny_backbone):
    gated, _ = segs
    sharp_out = gated.segment(_scenes(1)[0], texts=["stripes"])
    blurred_out = gated.segment(_blur(_scenes(1)[0]), texts=["stripes"])
    assert sharp_out.robust_tower == 0.0 and blurred_out.robust_tower == 1.0
    assert blurred_out.summary()["robust_tower"] == 1.0
    again = gated.segment(_blur(_scenes(1)[0]), texts=["stripes"])  # from the cache: still known
    assert again.robust_tower == 1.0
    other = Segmenter(tiny_backbone, SegmenterConfig(templates="plain"))  # an open_clip model: no robust tower
    out = other.segment(_scenes(1)[0], texts=["stripes"])
    assert out.robust_tower is None and "robust_tower" not in out.summary()


def test_queries_the_robust_tower_encoded_are_scored_with_its_own_head():
    gated = Segmenter.from_config(SegmenterConfig(mode="learned", deblur=False, robust_symmetry="none"))
    robust = Segmenter.from_config(SegmenterConfig(model="vlfss-tiny-robust", mode="learned", refine="pamr-area"))
    sharp = Segmenter.from_config(SegmenterConfig(mode="learned", robust_fallback=False))
    blurred, clean = _blur(_scenes(1)[0]), _scenes(1)[0]
    assert gated.robust_heads  # the shipped head has its pair
    a, b = gated.segment(blurred, texts=["stripes"]), robust.segment(blurred, texts=["stripes"])
    assert torch.allclose(a.logits, b.logits, atol=1e-4)  # robust tower + robust head, as vlfss-tiny-robust
    c, d = gated.segment(clean, texts=["stripes"]), sharp.segment(clean, texts=["stripes"])
    assert torch.equal(c.logits, d.logits)  # sharp images: exactly the sharp model
    off = Segmenter.from_config(SegmenterConfig(mode="learned", robust_heads=False, deblur=False,
                                                robust_symmetry="none"))
    assert not off.robust_heads
    assert not torch.allclose(off.segment(blurred, texts=["stripes"]).logits, a.logits, atol=1e-3)


def test_fold_heads_in_eval_get_their_pairs(tmp_path):
    from vlfss.evaluation.runner import fold_head_files, load_fold_heads
    from vlfss.modeling.backbones.base import ASSETS

    files = fold_head_files(str(ASSETS / "head-vlfss-tiny-fold{fold}.safetensors"), [0, 1])
    seg = Segmenter.from_config(SegmenterConfig(mode="learned", head_path=str(files[0])))
    heads = load_fold_heads(seg, files)
    assert all(id(h) in seg.robust_heads for h in heads.values())
