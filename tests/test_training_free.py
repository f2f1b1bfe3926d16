"""Training-free scoring on hand-made features with known answers: prototypes, metrics, background, checks."""

from __future__ import annotations

import pytest
import torch

from vlfss.errors import InputError
from vlfss.modeling.config import TrainingFreeConfig
from vlfss.modeling.training_free import check_config, text_level, training_free_logits
from vlfss.modeling.types import ClassSpec, Encoded

OBJ = torch.zeros(4, 4, dtype=torch.bool)
OBJ[1:3, 1:3] = True  # the object: the middle 2 x 2 cells of a 4 x 4 grid
MASK = OBJ.to(torch.uint8).repeat_interleave(4, 0).repeat_interleave(4, 1)  # 16 x 16 pixels, 4 per cell side
T = TrainingFreeConfig().proto_temperature


def enc(z: torch.Tensor, taps: list[torch.Tensor] | None = None) -> Encoded:
    return Encoded(taps=taps or [], z=z, rgb=torch.zeros(3, 16, 16), size=(16, 16))


def paint(fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """C x 4 x 4 features: ``fg`` on the object cells, ``bg`` elsewhere."""
    return torch.where(OBJ, fg[:, None, None], bg[:, None, None])


def test_kmeans_background_prototypes_separate_what_one_mean_cannot():
    """Background of two kinds whose mean points at the object: one mean prototype cannot tell the object from
    the background by cosine; k-means background prototypes can (training_free.num_bg_prototypes)."""
    a, b, c = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    kind = torch.zeros(4, 4, dtype=torch.long)
    kind[:, :1], kind[:, 3:] = 1, 2  # two background kinds left and right
    kind[0, 1:3], kind[3, 1:3] = 1, 2
    z = torch.stack([a, b, c])[kind].permute(2, 0, 1)  # 3 x 4 x 4, object (kind 0) in the middle
    e = enc(z)
    spec = ClassSpec(name="thing", text=None, supports=[(e, MASK)])
    for k, separates in ((1, False), (2, True)):
        cfg = TrainingFreeConfig(num_bg_prototypes=k, metric="cosine")
        logits = training_free_logits(e, [spec], [], cfg, 1.0, 0.0)[0]
        fg_min, bg_max = float(logits[OBJ].min()), float(logits[~OBJ].max())
        assert (fg_min > 0 > bg_max) == separates, (k, fg_min, bg_max)


def test_prototypes_match_on_the_chosen_encoder_tap():
    """training_free.proto_features picks the features prototypes match on: where the text-aligned z cannot tell
    object from background but an encoder tap can, only the tap separates them."""
    z = torch.ones(3, 4, 4)  # every cell the same direction: no prototype evidence
    tap = torch.stack([OBJ.float(), (~OBJ).float()])  # 2 x 4 x 4: object and background orthogonal
    e = enc(z, [tap])
    spec = ClassSpec(name="thing", text=None, supports=[(e, MASK)])
    on_z = training_free_logits(e, [spec], [], TrainingFreeConfig(proto_features="z"), 1.0, 0.0)[0]
    on_tap = training_free_logits(e, [spec], [], TrainingFreeConfig(proto_features="tap0"), 1.0, 0.0)[0]
    assert float(on_z.abs().max()) < 1e-4
    assert float(on_tap[OBJ].min()) > 0 > float(on_tap[~OBJ].max())


def test_shots_average_into_one_class_prototype():
    """K shots' foreground prototypes are averaged into one class prototype (PANet): a query like shot a
    matches (a + b) / 2 at cosine 1/sqrt(2), not shot a alone at cosine 1."""
    a, b, bg = torch.eye(3)
    spec = ClassSpec(name="thing", text=None, supports=[(enc(paint(a, bg)), MASK), (enc(paint(b, bg)), MASK)])
    mean = training_free_logits(enc(paint(a, bg)), [spec], [], TrainingFreeConfig(metric="cosine"), 1.0, 0.0)[0]
    assert float(mean[OBJ].mean()) == pytest.approx(2 ** -0.5 / T, rel=1e-4)  # cos to (a + b) / 2, 0 to bg


def test_every_foreground_cell_votes_equally_in_a_prototype():
    """A prototype is the mean of L2-normalised cells: one loud cell of another look (norm 10) counts as one of
    the four object cells, not as ten: cos(b, (a + 3b) / 4), not cos(b, (10a + 3b) / 4)."""
    a, b, c = torch.eye(3)
    z = paint(b, c).clone()
    z[:, 1, 1] = 10 * a
    spec = ClassSpec(name="thing", text=None, supports=[(enc(z), MASK)])
    logits = training_free_logits(enc(paint(b, c)), [spec], [], TrainingFreeConfig(metric="cosine"), 1.0, 0.0)[0]
    assert float(logits[OBJ].mean()) == pytest.approx(3 / 10 ** 0.5 / T, rel=1e-4)
    assert float(logits[OBJ].mean()) != pytest.approx(3 / 109 ** 0.5 / T, rel=1e-2)


def test_mahalanobis_prototypes_discount_the_directions_an_object_varies_in():
    """Object and background differ a little along a direction both hold still, and a lot, but with wide
    scatter, along another: cosine follows the wide direction and labels the query backwards; the Mahalanobis
    metric under the supports' covariance follows the steady one and gets both regions right."""
    swing = torch.tensor([[2.0, -2.0] * 2, [-2.0, 2.0] * 2] * 2)  # +-2 scatter along dim 0, mean 0 in each region
    sz = torch.stack([torch.where(OBJ, 1.0, -1.0) + swing, torch.where(OBJ, 0.5, -0.5), torch.ones(4, 4)])
    qz = torch.stack([torch.where(OBJ, -1.5, 1.5), torch.where(OBJ, 0.5, -0.5), torch.ones(4, 4)])
    spec = ClassSpec(name="thing", text=None, supports=[(enc(sz), MASK)])
    labels = {}
    for metric in ("cosine", "mahalanobis"):
        cfg = TrainingFreeConfig(metric=metric, shrinkage=0.1)
        labels[metric] = training_free_logits(enc(qz), [spec], [], cfg, 1.0, 0.0)[0] > 0
    assert torch.equal(labels["mahalanobis"], OBJ)
    assert torch.equal(labels["cosine"], ~OBJ)


def test_negative_examples_are_background_evidence():
    """A negative example's foreground joins the background prototypes: query cells that look like it get
    (0 - 1) / T instead of (0 - 0) / T, cells that look like the support keep (1 - 0) / T."""
    a, b, bg = torch.eye(3)
    left = OBJ & (torch.arange(4)[None, :] < 2)
    right = OBJ & ~left
    query = enc(torch.where(left, a[:, None, None], torch.where(right, b[:, None, None], bg[:, None, None])))
    spec = ClassSpec(name="thing", text=None, supports=[(enc(paint(a, bg)), MASK)])
    cfg = TrainingFreeConfig(metric="cosine")
    plain = training_free_logits(query, [spec], [], cfg, 1.0, 0.0)[0]
    with_neg = training_free_logits(query, [spec], [(enc(paint(b, bg)), MASK)], cfg, 1.0, 0.0)[0]
    assert torch.allclose(plain[left], torch.full((2,), 1 / T)) and torch.allclose(with_neg[left], plain[left])
    assert torch.allclose(plain[right], torch.zeros(2), atol=1e-5)
    assert torch.allclose(with_neg[right], torch.full((2,), -1 / T))


@pytest.mark.parametrize("kind", ["unrelated", "anti-aligned"])
def test_text_calibrated_on_the_supports_does_not_spoil_the_examples(kind):
    """Text whose cosine does not follow the support's mask (or follows it backwards) must not change what the
    examples say: calibrated on the supports, its slope is ~0 (within the fit's standard error, far below the
    examples' margin of 1 / T) or negative, so the object's cells stay exactly those of examples alone; the plain
    average with an anti-aligned text loses the whole object."""
    g = torch.Generator().manual_seed(0)
    obj = torch.zeros(8, 8, dtype=torch.bool)
    obj[2:6, 2:6] = True
    mask = obj.to(torch.uint8).repeat_interleave(4, 0).repeat_interleave(4, 1)  # 32 x 32 pixels
    e0, e1, e2, _ = torch.eye(4)
    z = torch.where(obj, e0[:, None, None], e1[:, None, None]) + 0.1 * torch.randn(4, 8, 8, generator=g)
    z[2] = 0.3 * torch.randn(8, 8, generator=g)  # a direction that varies regardless of the object
    e = Encoded(taps=[], z=z, rgb=torch.zeros(3, 32, 32), size=(32, 32))
    text = e2 if kind == "unrelated" else -e0
    both = ClassSpec(name="thing", text=text, supports=[(e, mask)])
    examples = ClassSpec(name="thing", text=None, supports=[(e, mask)])
    out = {}
    for calibrate in (True, False):
        cfg = TrainingFreeConfig(metric="cosine", calibrate_text=calibrate)
        out[calibrate] = training_free_logits(e, [both, examples], [], cfg, 100.0, 0.0) > 0  # 2 x 8 x 8 labels
    assert torch.equal(out[True][1], obj)  # examples alone are right, so there is something to spoil
    assert torch.equal(out[True][0], out[True][1])
    if kind == "anti-aligned":
        assert not out[False][0][obj].any()


def test_text_level_prefers_the_threshold_then_the_siglip_bias():
    assert text_level(0.3, -10.0, 10.0) == 0.3
    assert text_level(None, -10.0, 10.0) == pytest.approx(1.0)  # sigmoid(scale * cos + bias) = 1/2 at cos 1
    assert text_level(None, None, 10.0) is None  # no fixed level: background prompts decide


@pytest.mark.parametrize("kw, key", [
    ({"proto_features": "tap1"}, "proto_features"), ({"proto_features": "layer2"}, "proto_features"),
    ({"proto_features": "tap"}, "proto_features"), ({"metric": "euclid"}, "metric"),
    ({"shrinkage": 0.0}, "shrinkage"), ({"shrinkage": 1.5}, "shrinkage"),
    ({"mahalanobis_scale": 0.0}, "mahalanobis_scale"), ({"proto_temperature": -1.0}, "proto_temperature"),
    ({"num_prototypes": 0}, "num_prototypes"), ({"num_bg_prototypes": 0}, "num_bg_prototypes"),
])
def test_settings_that_cannot_score_are_refused_by_name(kw, key):
    with pytest.raises(InputError, match=rf"^pfx\.{key}="):
        check_config(TrainingFreeConfig(**kw), num_taps=1, prefix="pfx.")
    check_config(TrainingFreeConfig(proto_features="tap0"), num_taps=1, prefix="pfx.")  # a tap it has is fine
