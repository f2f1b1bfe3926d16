"""Pure tensor maths: mask pooling, prototypes, similarity maps, label maps, uncertainty, losses.

Nothing here mutates its inputs or holds state. Masks use 0 background, 1 foreground, 255 ignore.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = 255


def mask_weights(masks: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Foreground and background weights at feature resolution. masks: K x H x W in {0, 1, 255}.

    Returns (fg, bg), each K x h x w in [0, 1]: the fraction of each feature cell covered by
    foreground / background pixels (ignored pixels count for neither). Area pooling keeps tiny objects.
    """
    m = masks.float()
    valid = (masks != IGNORE).float()
    fg = ((m == 1).float() * valid).unsqueeze(1)
    bg = ((m == 0).float() * valid).unsqueeze(1)
    fg = F.adaptive_avg_pool2d(fg, size) if fg.shape[-2:] != size else fg
    bg = F.adaptive_avg_pool2d(bg, size) if bg.shape[-2:] != size else bg
    return fg[:, 0], bg[:, 0]


def masked_average_pool(feats: Tensor, weights: Tensor, eps: float = 1e-6) -> Tensor:
    """Weighted mean of features. feats: K x C x h x w, weights: K x h x w -> K x C."""
    w = weights.unsqueeze(1)  # K x 1 x h x w
    return (feats * w).sum((2, 3)) / (w.sum((2, 3)) + eps)


def prototypes(feats: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Foreground and background prototypes, one per support. feats K x C x h x w, masks K x H x W -> 2 x (K x C)."""
    fg_w, bg_w = mask_weights(masks, tuple(feats.shape[-2:]))
    return masked_average_pool(feats, fg_w), masked_average_pool(feats, bg_w)


def kmeans(x: Tensor, k: int, iters: int = 10, seed: int = 0) -> Tensor:
    """k-means on rows of x (M x C) with deterministic farthest-point init; returns k x C centres (k <= M)."""
    m = x.shape[0]
    k = max(1, min(k, m))
    g = torch.Generator().manual_seed(seed)
    first = int(torch.randint(m, (1,), generator=g))
    idx = [first]
    d = torch.cdist(x, x[first:first + 1]).squeeze(1)
    for _ in range(1, k):
        nxt = int(torch.argmax(d))
        idx.append(nxt)
        d = torch.minimum(d, torch.cdist(x, x[nxt:nxt + 1]).squeeze(1))
    centres = x[idx].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        for j in range(k):
            sel = assign == j
            if sel.any():
                centres[j] = x[sel].mean(0)
    return centres


def multi_prototypes(feats: Tensor, masks: Tensor, k: int, threshold: float = 0.5, seed: int = 0) -> Tensor:
    """Up to k foreground prototypes by k-means over support foreground feature cells (all K supports pooled).

    feats K x C x h x w, masks K x H x W -> k' x C with k' <= k (fewer if there are fewer foreground cells).
    Cells count as foreground where at least ``threshold`` of their area is foreground; if none
    qualifies, the single masked-average prototype is returned.
    """
    fg_w, _ = mask_weights(masks, tuple(feats.shape[-2:]))
    cells = feats.permute(0, 2, 3, 1)[fg_w >= threshold]  # M x C
    if cells.shape[0] == 0:
        return masked_average_pool(feats, fg_w).mean(0, keepdim=True)
    return kmeans(cells, k, seed=seed)


def cosine_map(feats: Tensor, protos: Tensor) -> Tensor:
    """Cosine similarity of every feature cell to every prototype.

    feats B x C x h x w, protos M x C -> B x M x h x w.
    """
    f = F.normalize(feats, dim=1)
    p = F.normalize(protos, dim=-1)
    return torch.einsum("bchw,mc->bmhw", f, p)


def foreground_cells(feats: Tensor, fg_weights: Tensor, threshold: float = 0.25) -> Tensor:
    """M x C: the feature cells (of K x C x h x w) whose foreground weight (K x h x w, from ``mask_weights``)
    exceeds ``threshold``, all K supports together."""
    return feats.permute(0, 2, 3, 1)[fg_weights > threshold]


def strided_rows(x: Tensor, max_rows: int) -> Tensor:
    """At most about ``max_rows`` rows of x (M x C), every ceil(M / max_rows)-th one (all when M <= max_rows)."""
    if x.shape[0] <= max_rows:
        return x
    return x[::-(-x.shape[0] // max_rows)]


def support_similarity_maps(query: Tensor, feats: Tensor, masks: Tensor) -> Tensor:
    """How much each query cell looks like the supports' object: 3 x h x w.

    query C x h x w; feats K x C x hs x ws (the K supports at one feature level); masks K x H x W in {0, 1, 255}.
    Channels: cosine to the shots' mean foreground prototype, cosine to their mean background prototype, and the
    best cosine to any single foreground cell (a correlation map as HSNet's; 0 where no cell is foreground).
    ``support_map_side`` + ``query_similarity_maps``, which split it into the supports' half (once per request)
    and the query's half.
    """
    return query_similarity_maps(query, *support_map_side(feats, masks))


def support_map_side(feats: Tensor, masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The supports' half of ``support_similarity_maps``, the same for every query: (mean foreground prototype
    1 x C, mean background prototype 1 x C, foreground cells M x C), each row L2-normalised."""
    fg_w, bg_w = mask_weights(masks, tuple(feats.shape[-2:]))
    fg = masked_average_pool(feats, fg_w).mean(0, keepdim=True)
    bg = masked_average_pool(feats, bg_w).mean(0, keepdim=True)
    return F.normalize(fg, dim=-1), F.normalize(bg, dim=-1), F.normalize(foreground_cells(feats, fg_w), dim=-1)


def query_similarity_maps(query: Tensor, fg: Tensor, bg: Tensor, cells: Tensor) -> Tensor:
    """The query's half of ``support_similarity_maps``: 3 x h x w from query C x h x w and ``support_map_side``'s
    normalised (fg 1 x C, bg 1 x C, cells M x C); the same numbers as ``cosine_map`` on the raw prototypes."""
    q = F.normalize(query.unsqueeze(0), dim=1)
    fgm = torch.einsum("bchw,mc->bmhw", q, fg)[0]  # 1 x h x w
    bgm = torch.einsum("bchw,mc->bmhw", q, bg)[0]
    corr = (torch.einsum("bchw,mc->bmhw", q, cells)[0].max(0).values.unsqueeze(0) if cells.shape[0]
            else query.new_zeros(1, *q.shape[-2:]))
    return torch.cat([fgm, bgm, corr])


def pooled_covariance(cells: Tensor, weights: Tensor) -> Tensor:
    """Within-group covariance of feature cells, pooled over groups (the shared covariance of LDA).

    cells M x C; weights G x M, each row one group's soft membership of the cells (e.g. one support's foreground
    or background weights). Returns C x C: the weighted scatter of every cell about its group's mean, summed
    over groups and divided by the total weight (zero when nothing has weight).
    """
    cells = cells.double()
    weights = weights.double()
    total = weights.sum()
    mass = weights.sum(1, keepdim=True)  # G x 1
    means = (weights @ cells) / mass.clamp_min(1e-12)  # G x C
    scatter = cells.T @ (cells * weights.sum(0, keepdim=True).T) - means.T @ (means * mass)
    return (scatter / total.clamp_min(1e-12)).to(torch.float32)


def shrunk_precision(cov: Tensor, shrinkage: float, eps: float = 1e-6) -> Tensor:
    """Inverse of ``(1 - shrinkage) * cov + shrinkage * (tr(cov) / C) * I`` (Ledoit-Wolf-style shrinkage toward a
    scaled identity, as Simple CNAPS does for few-shot covariances): a few hundred support cells cannot estimate
    a C x C covariance on their own. shrinkage in (0, 1]; 1 gives Euclidean distance up to scale."""
    c = cov.shape[0]
    cov = cov.double()
    scale = float(torch.trace(cov)) / c
    eye = torch.eye(c, dtype=cov.dtype)
    shrunk = (1 - shrinkage) * cov + (shrinkage * scale + eps) * eye
    return torch.linalg.inv(shrunk).to(torch.float32)


def discriminant_map(feats: Tensor, protos: Tensor, precision: Tensor, center: Tensor | None = None) -> Tensor:
    """Linear discriminant score of every cell for every prototype: ``mu' P x - mu' P mu / 2``.

    feats B x C x h x w, protos M x C, precision C x C -> B x M x h x w. The difference of two prototypes' scores
    is half the difference of their squared Mahalanobis distances, i.e. the Gaussian log-likelihood ratio with a
    shared covariance: a log-odds without a temperature. ``center`` (C), e.g. the mean support cell, is
    subtracted from cells and prototypes first: differences between prototypes do not change, but the scores
    shrink from the size of ``mu' P mu`` to that of the differences, which float arithmetic then keeps exact
    (with a sharp precision the uncentred scores cancel in their last digits). Computed in float64.
    """
    f, p, prec = feats.double(), protos.double(), precision.double()
    if center is not None:
        f = f - center.double()[None, :, None, None]
        p = p - center.double()[None, :]
    pm = p @ prec  # M x C (precision is symmetric)
    bias = 0.5 * (pm * p).sum(1)  # M
    return (torch.einsum("bchw,mc->bmhw", f, pm) - bias[None, :, None, None]).to(feats.dtype)


def foreground_logit(fg_sim: Tensor, bg_sim: Tensor, temperature: float) -> Tensor:
    """Log-odds of foreground from similarities to foreground and background evidence: (fg - bg) / T."""
    return (fg_sim - bg_sim) / temperature


def fit_logistic_1d(x: Tensor, fg: Tensor, bg: Tensor, l2: float = 1e-2, steps: int = 25) -> tuple[float, float]:
    """Weighted 1-D logistic regression ``p(fg | x) = sigmoid(a x + b)`` by Newton's method -> (a, b).

    ``x``, ``fg``, ``bg`` are same-shaped: a score per cell and the cell's foreground / background weight
    (soft labels, as ``mask_weights`` gives). ``x`` is standardised first so that the ridge penalty ``l2 * a^2``
    (per unit of total weight) does not depend on the score's units; ``b`` is not penalised.
    """
    # a fitted calibration, not a differentiable layer: (a, b) are plain floats, so no gradient flows back
    x, fg, bg = (t.detach().reshape(-1).double() for t in (x, fg, bg))
    w = fg + bg
    total = float(w.sum())
    if total <= 0:
        raise ValueError("fit_logistic_1d needs cells with a foreground or background weight")
    y = fg / w.clamp_min(1e-12)
    mu = float((w * x).sum()) / total
    sd = math.sqrt(max(float((w * (x - mu) ** 2).sum()) / total, 1e-12))
    xs = (x - mu) / sd
    X = torch.stack([xs, torch.ones_like(xs)], 1)  # M x 2
    theta = torch.zeros(2, dtype=torch.float64)
    ridge = torch.diag(torch.tensor([l2 * total, 1e-9 * total], dtype=torch.float64))
    for _ in range(steps):
        p = torch.sigmoid(X @ theta)
        grad = X.T @ (w * (p - y)) + ridge @ theta
        hess = X.T @ (X * (w * p * (1 - p)).unsqueeze(1)) + ridge
        step = torch.linalg.solve(hess, grad)
        theta = theta - step
        if float(step.abs().max()) < 1e-8:
            break
    a, b = float(theta[0]) / sd, float(theta[1]) - float(theta[0]) * mu / sd
    return a, b


def nway_logits(fg_logits: Tensor) -> Tensor:
    """B x N x h x w per-class foreground log-odds -> B x (N+1) x h x w with background logit 0 in channel 0.

    With one class the softmax equals the sigmoid of its log-odds; with N classes they compete.
    """
    zeros = torch.zeros_like(fg_logits[:, :1])
    return torch.cat([zeros, fg_logits], dim=1)


def label_map(probs: Tensor) -> Tensor:
    """B x (N+1) x H x W probabilities -> B x H x W labels (0 background, 1..N classes)."""
    return probs.argmax(1)


def normalised_entropy(probs: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-pixel entropy of B x C x H x W probabilities divided by log C (0 certain .. 1 uniform)."""
    c = probs.shape[1]
    ent = -(probs * (probs + eps).log()).sum(1)
    return ent / math.log(c) if c > 1 else torch.zeros_like(ent)


def dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Soft dice loss for binary log-odds B x H x W against target {0,1,255} (255 ignored)."""
    valid = (target != IGNORE).float()
    p = torch.sigmoid(logits) * valid
    t = (target == 1).float() * valid
    inter = (p * t).sum((1, 2))
    return (1 - (2 * inter + eps) / (p.sum((1, 2)) + t.sum((1, 2)) + eps)).mean()


def bce_dice_loss(logits: Tensor, target: Tensor, dice_weight: float = 1.0) -> Tensor:
    """Binary cross-entropy (ignoring 255) plus dice, for B x H x W log-odds."""
    valid = target != IGNORE
    bce = F.binary_cross_entropy_with_logits(logits[valid], (target[valid] == 1).float()) if valid.any() else \
        logits.sum() * 0
    return bce + dice_weight * dice_loss(logits, target)


def nway_ce_dice_loss(logits: Tensor, target: Tensor, dice_weight: float = 1.0) -> Tensor:
    """Cross-entropy over B x (N+1) x H x W logits with labels 0..N (255 ignored) plus per-class dice."""
    if not (target != IGNORE).any():  # nothing to learn from: zero loss that keeps the graph
        return logits.sum() * 0
    ce = F.cross_entropy(logits, target.long(), ignore_index=IGNORE)
    if dice_weight == 0:
        return ce
    probs = logits.softmax(1)
    valid = (target != IGNORE).unsqueeze(1).float()
    onehot = F.one_hot(torch.where(target == IGNORE, 0, target).long(), logits.shape[1]).permute(0, 3, 1, 2).float()
    p, t = probs[:, 1:] * valid, onehot[:, 1:] * valid
    inter = (p * t).sum((2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum((2, 3)) + t.sum((2, 3)) + 1)
    return ce + dice_weight * dice.mean()
