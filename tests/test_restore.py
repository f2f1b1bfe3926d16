"""Deblurring flagged images: the Wiener maths, the spectrum features, the restorer's file and choices, and the
embedded model's path for a flagged image (filtered as the restorer says, then the robust tower)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlfss.data.perturb import apply_image, parse_perturbation
from vlfss.data.synthetic import generate_scene
from vlfss.errors import ModelError
from vlfss.modeling.backbones.tiny import RESTORER
from vlfss.modeling.config import SegmenterConfig
from vlfss.modeling.fallback import dense_with_fallback
from vlfss.modeling.quality_gate import write_fitted
from vlfss.modeling.restore import (
    RESTORER_FORMAT,
    RESTORER_TENSORS,
    SCALARS,
    Restorer,
    block_features,
    gaussian_otf,
    load_restorer,
    spectrum_features,
    wiener_deblur,
)
from vlfss.segmenter import Segmenter


def _scene(i: int = 0) -> np.ndarray:
    return generate_scene(12345, i).image  # a world seed no split uses


def _corrupt(image: np.ndarray, spec: str) -> np.ndarray:
    return apply_image(parse_perturbation(spec), image)


def _blur_fft(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A periodic Gaussian blur (exactly what the Wiener filter inverts, away from the padding)."""
    otf = gaussian_otf(x.shape[-2], x.shape[-1], torch.tensor([sigma]))[:, None]
    return torch.fft.irfft2(torch.fft.rfft2(x) * otf, s=x.shape[-2:])


def test_wiener_deblur_undoes_a_gaussian_blur_and_leaves_sigma_zero_alone():
    torch.manual_seed(0)
    x = _blur_fft(torch.rand(2, 3, 48, 48), 0.6)  # detail up to about 0.4 cycles/pixel, as photos have
    blurred = _blur_fft(x, 1.0)
    restored = wiener_deblur(blurred, torch.tensor([1.0, 0.0]), k=1e-4, pad=0)
    err_blurred = (blurred[0] - x[0]).abs().mean()
    assert (restored[0] - x[0]).abs().mean() < 0.35 * err_blurred  # most of the lost detail comes back
    assert torch.equal(restored[1], blurred[1])  # sigma 0: as it was
    smoothed = wiener_deblur(x, torch.tensor([-1.0, 0.0]), k=1e-4, pad=0)  # negative: a Gaussian blur instead
    assert torch.allclose(smoothed[0], _blur_fft(x[:1], 1.0)[0], atol=1e-5) and torch.equal(smoothed[1], x[1])
    clamped = wiener_deblur(blurred, torch.tensor([1.0, 1.0]), 1e-4, torch.zeros(3), torch.ones(3))
    assert clamped.min() >= 0 and clamped.max() <= 1


def test_spectrum_features_see_blur_and_jpeg_blocks():
    seg = Segmenter.from_config(SegmenterConfig(robust_fallback=False))
    img = _scene()
    x = torch.stack([seg._to_input(im, (96, 96)) for im in (img, _corrupt(img, "blur:1"), _corrupt(img, "jpeg:10"))])
    f = spectrum_features(x)
    assert f.shape == (3, 32)
    assert f[1, 12:16].mean() < f[0, 12:16].mean() - 2  # blur: far less power in the outer rings
    # JPEG's 8 x 8 blocks: the ring at 1/8 cycles/pixel has more of its power on the axes than the clean scene's
    ring = int(0.125 / 0.5 * 16)
    assert f[2, 16 + ring] > f[0, 16 + ring]


def test_block_features_find_jpeg_blocks_wherever_they_start():
    seg = Segmenter.from_config(SegmenterConfig(robust_fallback=False))
    specs = (None, "jpeg:30", "jpeg:10", "blur:1", "scale:1.5")
    x = torch.stack([seg._to_input(im if s is None else _corrupt(im, s)[:96, :96], (96, 96))
                     for im in (_scene(i) for i in range(4)) for s in specs])
    f = block_features(x)
    assert f.shape == (20, 16)
    top = f[:, [0, 8]].mean(1).view(4, len(specs)).mean(0)  # the strongest column and row phase, over the mean
    clean, q30, q10, blur, scale = top.tolist()
    assert q10 > q30 > 2 * max(clean, blur, scale)  # compressed: one phase (the blocks' edges) steps most
    jpeg = x.view(4, len(specs), *x.shape[1:])[:, 1]
    shifted = block_features(jpeg[:, :, 3:, 5:])  # windows that start mid-block see the same blocks
    assert torch.allclose(shifted[:, [0, 8]].mean(1), block_features(jpeg)[:, [0, 8]].mean(1), atol=0.1)
    assert torch.equal(block_features(torch.zeros(1, 3, 5, 5)), torch.zeros(1, 16))  # smaller than a block


def _restorer(**kw) -> Restorer:
    """A restorer whose MLP ignores its input: the kinds' logits and the blur sigma are its output bias."""
    base = dict(mean=torch.zeros(2 + 32), std=torch.ones(2 + 32), weight1=torch.zeros(4, 34), bias1=torch.zeros(4),
                weight2=torch.zeros(5, 4), bias2=torch.tensor([0.0, 0.0, 5.0, 0.0, 1.2]), k=1e-3, up_sigma=0.5,
                blur_offset=0.2, confidence=0.9, backbone="m|taps=1", down_sigma=0.4, other_sigma=-0.3)
    base.update(kw)
    return Restorer(**base)


def test_restorer_deblurs_by_the_kind_and_its_confidence():
    images, feats = torch.zeros(2, 3, 16, 16), torch.zeros(2, 2)
    assert torch.allclose(_restorer().sigma(feats, images), torch.tensor([1.0, 1.0]))  # blurred, 1.2 less 0.2
    up = _restorer(bias2=torch.tensor([0.0, 5.0, 0.0, 0.0, 0.0]))
    assert up.sigma(feats, images).tolist() == [0.5, 0.5]
    down = _restorer(bias2=torch.tensor([0.0, 0.0, 0.0, 5.0, 0.0]))  # downsampled: its own response
    assert torch.allclose(down.sigma(feats, images), torch.tensor([0.4, 0.4]))
    other = _restorer(bias2=torch.tensor([5.0, 0.0, 0.0, 0.0, 0.0]))  # e.g. JPEG: smoothed (a negative sigma)
    assert torch.allclose(other.sigma(feats, images), torch.tensor([-0.3, -0.3]))
    for logits in ([0.5, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0]):  # not sure enough of any kind: left alone
        assert _restorer(bias2=torch.tensor([*logits, 0.0])).sigma(feats, images).tolist() == [0.0, 0.0]


def test_restorer_saves_and_loads_and_rejects_other_files(tmp_path):
    r = _restorer()
    r.save(tmp_path / "r.safetensors")
    back = load_restorer(tmp_path / "r.safetensors")
    assert (back.up_sigma, back.blur_offset, back.confidence, back.backbone) == (0.5, 0.2, 0.9, "m|taps=1")
    assert (back.down_sigma, back.other_sigma) == (0.4, -0.3)
    assert back.digest and torch.equal(back.bias2, r.bias2)
    (tmp_path / "bad.safetensors").write_bytes(b"not a restorer")
    with pytest.raises(ModelError, match="restorer .*bad.safetensors does not load"):
        load_restorer(tmp_path / "bad.safetensors")
    with pytest.raises(ModelError, match="reads 34 features, got 35"):
        r.predict(torch.zeros(1, 3), torch.zeros(1, 3, 16, 16))
    r = _restorer()
    write_fitted(tmp_path / "v1.safetensors", RESTORER_FORMAT, {k: getattr(r, k) for k in RESTORER_TENSORS},
                 {k: getattr(r, k) for k in SCALARS})  # fitted before down / other responses existed
    v1 = load_restorer(tmp_path / "v1.safetensors")
    assert (v1.down_sigma, v1.other_sigma) == (0.0, 0.0)  # those kinds are left alone, as they were then
    assert not v1.blocks and v1.inputs(torch.zeros(1, 2), torch.zeros(1, 3, 16, 16)).shape == (1, 34)
    wide = _restorer(mean=torch.zeros(50), std=torch.ones(50), weight1=torch.zeros(4, 50), blocks=True)
    wide.save(tmp_path / "blocks.safetensors")
    back = load_restorer(tmp_path / "blocks.safetensors")
    assert back.blocks and back.sigma(torch.zeros(2, 2), torch.zeros(2, 3, 16, 16)).shape == (2,)
    _restorer(weight2=torch.zeros(4, 4), bias2=torch.zeros(4)).save(tmp_path / "old.safetensors")  # 3 kinds
    with pytest.raises(ModelError, match="old.safetensors does not load .*4 outputs, not 5"):
        load_restorer(tmp_path / "old.safetensors")


@pytest.fixture(scope="module")
def seg() -> Segmenter:
    return Segmenter.from_config(SegmenterConfig(mode="training-free"))


def test_shipped_restorer_is_used_by_default_and_changes_the_cache_key(seg):
    assert RESTORER.is_file() and seg.restorer is not None
    assert seg.restorer.backbone == seg.gate.backbone
    off = Segmenter.from_config(SegmenterConfig(mode="training-free", deblur=False))
    assert off.restorer is None and off.feature_id != seg.feature_id


def test_a_blurred_photo_is_deblurred_before_the_robust_tower_encodes_it(seg):
    bb, r = seg.backbone, seg.restorer
    images = [_corrupt(_scene(i), "blur:1") for i in range(4)]
    batch = torch.stack([seg._to_input(im, (96, 96)) for im in images])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats, flags, sigmas = dense_with_fallback(bb, seg.fallback, seg.gate, batch, seg.variant, r)
    assert flags.all() and (sigmas > 0.5).all() and (sigmas < 1.2).all()  # near the true sigma, less the offset
    mean, std = torch.tensor(bb.mean), torch.tensor(bb.std)
    x = wiener_deblur(batch, sigmas, r.k, -mean / std, (1 - mean) / std)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        robust = seg.fallback.dense(x, seg.variant)
    assert torch.allclose(feats.z.float(), robust.z.float(), atol=1e-3)
    out = seg.segment(images[0], texts=["stripes"])
    assert out.restored == 1.0 and out.robust_tower == 1.0 and out.summary()["restored"] == 1.0


def _sigmas(seg: Segmenter, spec: str, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    images = [_corrupt(_scene(i), spec) for i in range(n)]
    batch = torch.stack([seg._to_input(im, seg.encoder_size(*im.shape[:2])) for im in images])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, flags, sigmas = dense_with_fallback(seg.backbone, seg.fallback, seg.gate, batch, seg.variant, seg.restorer)
    return flags, sigmas


def test_jpeg_is_left_alone(seg):
    flags, sigmas = _sigmas(seg, "jpeg:20")  # neither a deblur nor a smoothing paid for JPEG on the val split
    assert flags.any() and (sigmas[flags] == 0).float().mean() >= 0.75


def test_a_downscaled_photo_is_deblurred_by_its_own_response(seg):
    assert seg.restorer.down_sigma > 0  # bilinear upsampling attenuated what the smaller image still held
    flags, sigmas = _sigmas(seg, "scale:0.75", 8)
    assert flags.all() and (sigmas > 0).all()  # some are taken for blurred ones: deblurred by their own sigma
    assert (sigmas == seg.restorer.down_sigma).float().mean() >= 0.5


def test_clean_images_are_never_deblurred(seg):
    images = [_scene(i) for i in range(3)]
    enc = seg.encode(images)
    sharp = Segmenter.from_config(SegmenterConfig(mode="training-free", robust_fallback=False)).encode(images)
    assert all(torch.equal(a.z, b.z) for a, b in zip(enc, sharp))
    assert all(e.restored_share == 0.0 and e.robust_share == 0.0 for e in enc)
    assert seg.segment(images[0], texts=["stripes"]).summary()["restored"] == 0.0


def test_without_a_restorer_flagged_images_are_not_deblurred(seg):
    img = _scene()
    batch = torch.stack([seg._to_input(im, (96, 96)) for im in (img, _corrupt(img, "blur:1.5"))])
    with torch.inference_mode():
        _, flags, sigmas = dense_with_fallback(seg.backbone, seg.fallback, seg.gate, batch, seg.variant, None)
    assert flags.tolist() == [False, True] and sigmas.tolist() == [0.0, 0.0]


@pytest.mark.slow
def test_train_restorer_fits_a_restorer_that_reads_the_block_edges(tmp_path):
    """eval/train_restorer.py end to end on a few scenes: the file loads, reads the gate's taps, the spectrum and (by
    default) the block edges, and the report covers every check; ``--no-blocks`` fits the earlier kind."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "eval" / "train_restorer.py"
    spec = importlib.util.spec_from_file_location("eval_train_restorer", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    small = ["--train", "24", "--val", "12", "--test", "4", "--steps", "50", "--hidden", "16"]
    widths = {}
    for blocks in (True, False):
        out, report = tmp_path / f"r{blocks}.safetensors", tmp_path / f"r{blocks}.json"
        mod.main([*small, "--out", str(out), "--report", str(report)] + ([] if blocks else ["--no-blocks"]))
        r = load_restorer(out)
        assert r.blocks is blocks and r.digest
        widths[blocks] = r.mean.numel()
        assert set(json.loads(report.read_text())["test"]) == set(mod.CHECKS)
    assert widths[True] == widths[False] + 16  # the gate's features and the spectrum's, then the block edges'
