"""Features averaged over the grid's turns and mirrors (``robust_symmetry``) for images the robust tower encodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlfss.data.perturb import apply_image, parse_perturbation
from vlfss.data.synthetic import generate_scene
from vlfss.errors import InputError
from vlfss.modeling.config import SegmenterConfig
from vlfss.modeling.symmetry import dense_symmetric, grid_transforms
from vlfss.segmenter import Segmenter


def test_each_transform_is_undone_by_its_inverse_and_all_are_distinct():
    x = torch.randn(2, 3, 5, 5)
    for mode, n in (("none", 1), ("flip", 2), ("d8", 8)):
        ops = grid_transforms(mode)
        assert len(ops) == n and all(torch.equal(inv(fwd(x)), x) for fwd, inv in ops)
        assert len({tuple(fwd(x).flatten().tolist()) for fwd, _ in ops}) == n
        assert torch.equal(ops[0][0](x), x)  # the identity first
    y = torch.randn(1, 2, 4, 6)  # not square: the four that keep the shape
    ops = grid_transforms("d8", square=False)
    assert len(ops) == 4 and all(fwd(y).shape == y.shape and torch.equal(inv(fwd(y)), y) for fwd, inv in ops)
    with pytest.raises(ValueError, match="unknown symmetry 'rot'"):
        grid_transforms("rot")


@pytest.mark.parametrize("mode", ["flip", "d8"])
def test_averaged_features_follow_the_image_when_it_is_mirrored(tiny_backbone, mode):
    """The encoder alone is not mirror-equivariant (position embeddings); the average over the group is: the
    features of a mirrored image are the mirrored features of the image."""
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        plain, plain_m = tiny_backbone.dense(x, "plain"), tiny_backbone.dense(x.flip(-1), "plain")
        avg, avg_m = dense_symmetric(tiny_backbone, x, "plain", mode), dense_symmetric(tiny_backbone, x.flip(-1),
                                                                                          "plain", mode)
    assert not torch.allclose(plain_m.z, plain.z.flip(-1), atol=1e-3)
    assert torch.allclose(avg_m.z, avg.z.flip(-1), atol=1e-4)
    assert all(torch.allclose(a, b.flip(-1), atol=1e-4) for a, b in zip(avg_m.taps, avg.taps))
    assert torch.allclose(avg_m.pooled, avg.pooled, atol=1e-4)


def test_only_flagged_images_are_averaged_and_the_setting_is_part_of_the_cache_key():
    scenes = [generate_scene(12345, i).image for i in range(2)]
    blurred = apply_image(parse_perturbation("blur:1.5"), scenes[1])
    plain = Segmenter.from_config(SegmenterConfig(mode="training-free", robust_symmetry="none"))
    avg = Segmenter.from_config(SegmenterConfig(mode="training-free"))  # d8: the default
    a, b = plain.encode([scenes[0], blurred]), avg.encode([scenes[0], blurred])
    assert b[1].robust_share == 1.0 and b[0].robust_share == 0.0
    assert torch.equal(a[0].z, b[0].z)  # a sharp image keeps the sharp tower's features, bit for bit
    assert not torch.allclose(a[1].z, b[1].z, atol=1e-3)
    assert avg.feature_id == plain.feature_id + "+symmetry:d8"
    out = avg.segment(blurred, texts=["stripes"])
    assert out.probs.shape[-2:] == blurred.shape[:2] and np.isfinite(out.probs.numpy()).all()
    with pytest.raises(InputError, match="robust_symmetry='rot': use one of none, flip, d8"):
        Segmenter.from_config(SegmenterConfig(robust_symmetry="rot"))


def test_the_cost_script_times_every_arm_and_checks_the_scene_was_flagged(tmp_path, capsys):
    import importlib.util
    import json
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "eval" / "fallback_cost.py"
    spec = importlib.util.spec_from_file_location("eval_fallback_cost", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    out = tmp_path / "cost.json"
    assert mod.main(["--repeats", "1", "--warmup", "0", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["ms"]) == {"sharp", "flagged, none", "flagged, flip", "flagged, d8"}
    assert all(v > 0 for v in res["ms"].values()) and res["flagged_calls"] == {"none": 1, "flip": 1, "d8": 1}
    assert json.loads(capsys.readouterr().out) == res
    with pytest.raises(SystemExit, match="did not flag"):
        mod.main(["--repeats", "1", "--warmup", "0", "--blur", "0.01"])  # a sharp scene is never flagged


def test_a_large_batch_is_averaged_copy_by_copy_to_the_same_features(tiny_backbone):
    """Many windows (B x copies over max_batch) are encoded one copy at a time, to the same average."""
    x = torch.randn(3, 3, 96, 96)
    with torch.inference_mode():
        one = dense_symmetric(tiny_backbone, x, "plain", "d8")  # 24 <= 64: one batch
        each = dense_symmetric(tiny_backbone, x, "plain", "d8", max_batch=8)
    assert torch.allclose(one.z, each.z, atol=1e-5) and torch.allclose(one.pooled, each.pooled, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(one.taps, each.taps))
