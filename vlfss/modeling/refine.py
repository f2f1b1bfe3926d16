"""Mask refinement on the image: PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020).

Patch-level CLIP logits upsampled to the image are blurry at object boundaries. PAMR propagates class
probabilities between neighbouring pixels with weights from the image's own colour affinities (a softmax over each
pixel's dilated 8-neighbourhoods of -|I(p) - I(q)| / local std), iterated a few times: labels flow along regions of
similar colour and stop at edges. Training-free refinements of dense CLIP (e.g. in open-vocabulary segmentation)
use it as a cheap post-process. Pure functions of tensors; nothing is learned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _shifted(x: Tensor, dilations: list[int]) -> list[Tensor]:
    """B x C x H x W -> P views B x C x H x W, each pixel's neighbour at one offset (edges replicated), P = 8 *
    len(dilations) in ``neighbours``' order. Slices of one padded copy: nothing is stacked, so PAMR's loops can
    accumulate over neighbours one view at a time instead of materialising a P-times larger tensor."""
    pad = max(dilations)
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    h, w = x.shape[-2:]
    return [xp[..., pad + dy * d: pad + dy * d + h, pad + dx * d: pad + dx * d + w]
            for d in dilations for dy, dx in _OFFSETS]


def neighbours(x: Tensor, dilations: list[int]) -> Tensor:
    """B x C x H x W -> B x C x P x H x W: each pixel's 8 neighbours at every dilation (edges replicated),
    P = 8 * len(dilations)."""
    return torch.stack(_shifted(x, dilations), 2)


def pamr_affinity(image: Tensor, dilations: list[int]) -> Tensor:
    """B x 3 x H x W image -> B x 1 x P x H x W propagation weights (softmax over the P neighbours).

    A neighbour q of p gets the logit mean_c -|I_c(p) - I_c(q)| / (1e-8 + 0.1 std_c), std_c the (unbiased) spread of
    channel c over p and its P neighbours. Summed one neighbour view at a time (two-pass mean and variance), never
    over a stacked B x 3 x P x H x W copy: the same numbers up to float rounding, with a fraction of the memory traffic.
    """
    near = _shifted(image, dilations)
    n = len(near) + 1  # the neighbours and the centre
    mean = image.clone()
    for q in near:
        mean += q
    mean /= n
    diff = image - mean
    var = diff * diff
    for q in near:
        var.addcmul_(torch.sub(q, mean, out=diff), diff)
    scale = var.div_(n - 1).sqrt_().mul_(0.1).add_(1e-8)  # 1e-8 + 0.1 * local colour spread
    b, c, h, w = image.shape
    logits = image.new_empty(b, len(near), h, w)
    for k, q in enumerate(near):
        torch.sum(torch.sub(image, q, out=diff).abs_().div_(scale), 1, out=logits[:, k])
    return logits.div_(-c).softmax(1).unsqueeze(1)


def pamr(image: Tensor, probs: Tensor, iterations: int = 10, dilations: list[int] | None = None) -> Tensor:
    """Refine class probabilities on the image.

    image: B x 3 x H x W (any fixed normalisation), probs: B x K x H x W (summing to 1 over K). Returns refined
    B x K x H x W probabilities (still summing to 1: each step is a convex combination of neighbours).
    Each step adds weight x shifted view in place, neighbour by neighbour, rather than weighting a stacked
    B x K x P x H x W copy: P times less memory traffic per step. Each dilation's ring of 8 is summed before the rings
    are added, which rounds closer to the stacked sum than one chain of P in-place adds.
    """
    dilations = dilations or [1, 2, 4, 8, 12, 24]
    weights = pamr_affinity(image.float(), dilations).unbind(2)  # P x (B x 1 x H x W), shared by all classes
    out = probs.float()
    for _ in range(iterations):
        near = _shifted(out, dilations)
        step = None
        for i in range(0, len(near), 8):  # one ring of 8 neighbours per dilation
            ring = near[i] * weights[i]
            for k in range(i + 1, i + 8):
                ring.addcmul_(near[k], weights[k])
            step = ring if step is None else step.add_(ring)
        out = step
    return out


def refine_logits(image: Tensor, logits: Tensor, iterations: int, dilations: list[int], max_side: int) -> Tensor:
    """PAMR of one image's (N+1) x H x W logits -> the log of the refined probabilities (N+1) x H x W.

    image: 3 x H x W in [0, 1]. Images with a long side over ``max_side`` are refined at that size and the result
    upsampled (PAMR's cost and memory grow with pixels x neighbours x iterations).
    """
    x = image.float().to(logits.device).unsqueeze(0)  # the image comes from the CPU, the logits maybe from a GPU
    probs = logits.float().softmax(0).unsqueeze(0)
    size = tuple(probs.shape[-2:])
    r = max_side / max(size)
    if r < 1:
        small = (max(1, round(size[0] * r)), max(1, round(size[1] * r)))
        x = F.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=True)
        probs = F.interpolate(probs, size=small, mode="bilinear", align_corners=False)
    probs = pamr(x, probs, iterations, dilations)
    if r < 1:
        probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
    return probs[0].clamp_min(1e-8).log()


def keep_areas(before: Tensor, after: Tensor, iterations: int = 30) -> Tensor:
    """Refined (N+1) x H x W log-probabilities ``after`` with one offset per class, chosen so that each class wins
    as many pixels as it did in ``before`` (the unrefined logits): where the pixels are follows the refinement, how
    many are decided before it. Returns log-probabilities (renormalised, so confidences stay probabilities).

    Why: PAMR averages a class's probability over similar-coloured neighbours. An under-confident mask (a mean
    foreground probability of 0.46 over the object, 42% of it above 0.5) comes out uniformly just under 0.5 and is
    lost. Two classes get the exact threshold (a quantile of the refined margin); more classes get up to
    ``iterations`` corrections of the log offsets toward the target counts.
    """
    k = before.shape[0]
    target = torch.bincount(before.argmax(0).flatten(), minlength=k).float()
    offset = torch.zeros(k, 1, 1)
    if k == 2:
        margin = (after[1] - after[0]).flatten()
        n = int(target[1])
        if n == 0:
            offset[1] = -(margin.max() + 1.0)
        elif n < margin.numel():
            top = margin.topk(n + 1).values  # the n-th and (n+1)-th largest: cut between them
            offset[1] = -(top[-2] + top[-1]) / 2
        else:
            offset[1] = -(margin.min() - 1.0)
    else:
        for _ in range(iterations):
            got = torch.bincount((after + offset).argmax(0).flatten(), minlength=k).float()
            if torch.equal(got, target):
                break
            offset += 0.5 * (torch.log(target + 1) - torch.log(got + 1)).view(k, 1, 1)
    return torch.log_softmax(after + offset, 0)
