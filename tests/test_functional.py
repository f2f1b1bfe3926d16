"""Pure maths on hand-made tensors with known answers; inputs are never mutated."""

from __future__ import annotations

import math

import torch

from vlfss.modeling import functional as fn


def test_masked_average_pool_known_answer():
    feats = torch.arange(8, dtype=torch.float32).view(1, 2, 2, 2)  # channel 0: 0..3, channel 1: 4..7
    w = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    out = fn.masked_average_pool(feats, w)
    assert torch.allclose(out, torch.tensor([[1.5, 5.5]]))


def test_mask_weights_ignore_255_and_area_fraction():
    m = torch.tensor([[[1, 1, 0, 0], [1, 255, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]], dtype=torch.uint8)
    fg, bg = fn.mask_weights(m, (2, 2))
    assert torch.allclose(fg, torch.tensor([[[0.75, 0.0], [0.0, 0.25]]]))
    assert torch.allclose(bg, torch.tensor([[[0.0, 1.0], [1.0, 0.75]]]))


def test_prototypes_ignore_pixels_and_do_not_mutate():
    feats = torch.zeros(1, 1, 2, 2)
    feats[0, 0] = torch.tensor([[10.0, 0.0], [0.0, 100.0]])
    masks = torch.tensor([[[1, 0], [0, 255]]], dtype=torch.uint8)
    f0, m0 = feats.clone(), masks.clone()
    fg, bg = fn.prototypes(feats, masks)
    assert torch.allclose(fg, torch.tensor([[10.0]]))
    assert torch.allclose(bg, torch.tensor([[0.0]]))  # the 100 under 255 is ignored
    assert torch.equal(feats, f0) and torch.equal(masks, m0)


def test_cosine_map_and_nway_labels():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # two cells: e0, e1
    protos = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    sim = fn.cosine_map(feats, protos)
    assert torch.allclose(sim[0, :, 0], torch.eye(2))
    logits = fn.nway_logits(torch.tensor([[[[3.0, -3.0]], [[-1.0, 2.0]]]]))  # B=1, N=2, 1x2
    assert logits.shape == (1, 3, 1, 2)
    labels = fn.label_map(logits.softmax(1))
    assert labels.tolist() == [[[1, 2]]]


def test_single_class_softmax_equals_sigmoid():
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    p = fn.nway_logits(x).softmax(1)[:, 1]
    assert torch.allclose(p, torch.sigmoid(x[:, 0]), atol=1e-6)


def test_kmeans_separates_two_clusters():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 3, generator=g) * 0.01 + torch.tensor([5.0, 0, 0])
    b = torch.randn(20, 3, generator=g) * 0.01 - torch.tensor([5.0, 0, 0])
    c = fn.kmeans(torch.cat([a, b]), 2)
    assert sorted(c[:, 0].round().tolist()) == [-5.0, 5.0]


def test_multi_prototypes_counts():
    feats = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, 8, 8, dtype=torch.uint8)
    masks[:, :4] = 1
    assert fn.multi_prototypes(feats, masks, 3).shape == (3, 4)
    empty = torch.zeros(1, 8, 8, dtype=torch.uint8)
    empty[0, 0, 0] = 1
    assert fn.multi_prototypes(feats[:1], empty, 3).shape == (1, 4)


def test_entropy_bounds():
    uniform = torch.full((1, 4, 2, 2), 0.25)
    certain = torch.zeros(1, 4, 2, 2)
    certain[:, 0] = 1
    assert torch.allclose(fn.normalised_entropy(uniform), torch.ones(1, 2, 2))
    assert torch.allclose(fn.normalised_entropy(certain), torch.zeros(1, 2, 2), atol=1e-6)


def test_losses_ignore_255_and_reward_correct_logits():
    target = torch.tensor([[[1, 0], [255, 1]]], dtype=torch.uint8)
    good = torch.tensor([[[9.0, -9.0], [123.0, 9.0]]])
    bad = -good
    assert fn.bce_dice_loss(good, target) < 0.01 < fn.bce_dice_loss(bad, target)
    logits = torch.tensor([[[[0.0, 9.0]], [[9.0, 0.0]]]])  # B=1, 2 channels, 1x2
    t = torch.tensor([[[1, 0]]])
    assert fn.nway_ce_dice_loss(logits, t) < fn.nway_ce_dice_loss(logits.flip(1), t)
    assert math.isfinite(float(fn.nway_ce_dice_loss(logits, torch.full((1, 1, 2), 255))))


def _standard_errors(x: torch.Tensor, a: float, b: float) -> tuple[float, float]:
    """Asymptotic standard errors of a logistic fit's (slope, intercept) at the true (a, b): the square roots of
    the diagonal of the inverse Fisher information sum p (1 - p) [x, 1] [x, 1]^T."""
    p = torch.sigmoid(a * x.double() + b)
    X = torch.stack([x.double(), torch.ones_like(x.double())], 1)
    cov = torch.linalg.inv(X.T @ (X * (p * (1 - p)).unsqueeze(1)))
    return float(cov[0, 0].sqrt()), float(cov[1, 1].sqrt())


def test_fit_logistic_1d_recovers_slope_and_ignores_uninformative_scores():
    """Within 4 standard errors of the truth (a fit off by more is broken, not unlucky: p < 1e-4)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, generator=g) * 0.05 + 0.2  # cosine-like scores: small spread, far from 0
    y = (torch.rand(4000, generator=g) < torch.sigmoid(60 * x - 13)).float()
    x0 = x.clone()
    a, b = fn.fit_logistic_1d(x, y, 1 - y, l2=1e-4)
    se_a, se_b = _standard_errors(x, 60.0, -13.0)
    assert abs(a - 60) < 4 * se_a and abs(b + 13) < 4 * se_b
    assert torch.equal(x, x0)
    noise = torch.randn(4000, generator=g)  # scores unrelated to the labels: slope 0, intercept the prior log-odds
    a, b = fn.fit_logistic_1d(noise, y, 1 - y)
    prior = math.log(float(y.mean()) / (1 - float(y.mean())))
    se_a, se_b = _standard_errors(noise, 0.0, prior)
    assert abs(a) < 4 * se_a and abs(b - prior) < 4 * se_b
    # soft labels: a cell half foreground counts half for each side
    a, b = fn.fit_logistic_1d(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]))
    assert abs(a) < 1e-6 and abs(b) < 1e-6


def test_pooled_covariance_is_the_lda_within_group_covariance():
    """Soft group weights pool each group's scatter about its own mean; cells without weight do not count."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=g)
    w = torch.zeros(3, 30)
    w[0, :10], w[1, 10:25] = 1.0, 1.0  # cells 25.. belong to no group
    a, b = x[:10] - x[:10].mean(0), x[10:25] - x[10:25].mean(0)
    assert torch.allclose(fn.pooled_covariance(x, w), (a.T @ a + b.T @ b) / 25, atol=1e-5)


def test_discriminant_scores_differ_by_half_the_mahalanobis_distances():
    """score(x, mu1) - score(x, mu2) = (d2(x, mu2) - d2(x, mu1)) / 2 under the given precision: a log-odds."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 3, generator=g)
    cov = a @ a.T + 0.5 * torch.eye(3)
    prec = fn.shrunk_precision(cov, 0.3)
    assert torch.allclose(torch.linalg.inv(prec), 0.7 * cov + 0.3 * torch.trace(cov) / 3 * torch.eye(3), atol=1e-4)
    protos = torch.randn(2, 3, generator=g)
    feats = torch.randn(1, 3, 2, 2, generator=g)
    s = fn.discriminant_map(feats, protos, prec)  # 1 x 2 x 2 x 2
    x = feats[0].flatten(1).T  # 4 x 3
    d2 = [((x - p) @ prec * (x - p)).sum(1) for p in protos]
    assert torch.allclose((s[0, 0] - s[0, 1]).flatten(), (d2[1] - d2[0]) / 2, atol=1e-4)


def test_support_similarity_maps_known_answer():
    """Query cells equal to the support's object score 1 against its foreground prototype and its best cell, and
    0 against its background; background cells the reverse; channel order fg, bg, best cell."""
    a, bg = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    obj = torch.zeros(2, 2, dtype=torch.bool)
    obj[0, 0] = True
    feats = torch.where(obj, a[:, None, None], bg[:, None, None])  # 2 x 2 x 2
    masks = obj.to(torch.uint8).repeat_interleave(2, 0).repeat_interleave(2, 1)[None]  # 1 x 4 x 4
    f0 = feats.clone()
    maps = fn.support_similarity_maps(feats, feats[None], masks)
    assert maps.shape == (3, 2, 2) and torch.equal(feats, f0)
    assert torch.allclose(maps[0], obj.float()) and torch.allclose(maps[1], (~obj).float())
    assert torch.allclose(maps[2], obj.float())
    no_fg = fn.support_similarity_maps(feats, feats[None], torch.zeros_like(masks))
    assert torch.equal(no_fg[2], torch.zeros(2, 2))  # no foreground cell: no correlation evidence


def test_foreground_cells_and_strided_rows():
    feats = torch.arange(8.0).view(1, 2, 2, 2)  # cells (0,4) (1,5) (2,6) (3,7)
    fg_w = torch.tensor([[[1.0, 0.2], [0.3, 0.0]]])
    assert fn.foreground_cells(feats, fg_w).tolist() == [[0.0, 4.0], [2.0, 6.0]]  # weight > 0.25
    x = torch.arange(10.0)[:, None]
    assert torch.equal(fn.strided_rows(x, 10), x)
    assert fn.strided_rows(x, 4)[:, 0].tolist() == [0.0, 3.0, 6.0, 9.0]  # every ceil(10 / 4) = 3rd row
    assert fn.strided_rows(x, 5)[:, 0].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]



def test_support_similarity_maps_split_into_support_and_query_halves_is_exact():
    """The supports' half (once per request) and the query's half give the same bits as the maps computed from
    ``cosine_map`` on the raw prototypes and cells."""
    torch.manual_seed(0)
    q, feats = torch.randn(16, 6, 7), torch.randn(3, 16, 6, 7)
    masks = (torch.rand(3, 24, 28) > 0.6).to(torch.uint8)
    masks[0, :4] = fn.IGNORE
    fg_w, bg_w = fn.mask_weights(masks, (6, 7))
    cells = fn.foreground_cells(feats, fg_w)
    want = torch.cat([fn.cosine_map(q[None], fn.masked_average_pool(feats, fg_w).mean(0, keepdim=True))[0],
                      fn.cosine_map(q[None], fn.masked_average_pool(feats, bg_w).mean(0, keepdim=True))[0],
                      fn.cosine_map(q[None], cells)[0].max(0).values[None]])
    assert torch.equal(fn.query_similarity_maps(q, *fn.support_map_side(feats, masks)), want)
    assert torch.equal(fn.support_similarity_maps(q, feats, masks), want)
    no_fg = torch.zeros_like(masks)  # no foreground cell: the correlation channel is 0
    assert fn.support_similarity_maps(q, feats, no_fg)[2].abs().sum() == 0
