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


def neighbours(x: Tensor, dilations: list[int]) -> Tensor:
    """B x C x H x W -> B x C x P x H x W: each pixel's 8 neighbours at every dilation (edges replicated),
    P = 8 * len(dilations)."""
    pad = max(dilations)
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    h, w = x.shape[-2:]
    out = [xp[..., pad + dy * d: pad + dy * d + h, pad + dx * d: pad + dx * d + w]
           for d in dilations for dy, dx in _OFFSETS]
    return torch.stack(out, 2)


def pamr_affinity(image: Tensor, dilations: list[int]) -> Tensor:
    """B x 3 x H x W image -> B x 1 x P x H x W propagation weights (softmax over the P neighbours)."""
    near = neighbours(image, dilations)  # B x 3 x P x H x W
    with_centre = torch.cat([near, image.unsqueeze(2)], 2)
    std = with_centre.std(2, keepdim=True)  # local colour spread
    aff = -(image.unsqueeze(2) - near).abs() / (1e-8 + 0.1 * std)
    return aff.mean(1, keepdim=True).softmax(2)


def pamr(image: Tensor, probs: Tensor, iterations: int = 10, dilations: list[int] | None = None) -> Tensor:
    """Refine class probabilities on the image.

    image: B x 3 x H x W (any fixed normalisation), probs: B x K x H x W (summing to 1 over K). Returns refined
    B x K x H x W probabilities (still summing to 1: each step is a convex combination of neighbours).
    """
    dilations = dilations or [1, 2, 4, 8, 12, 24]
    aff = pamr_affinity(image.float(), dilations)
    out = probs.float()
    for _ in range(iterations):
        out = (neighbours(out, dilations) * aff).sum(2)
    return out


def refine_logits(image: Tensor, logits: Tensor, iterations: int, dilations: list[int], max_side: int) -> Tensor:
    """PAMR of one image's (N+1) x H x W logits -> the log of the refined probabilities (N+1) x H x W.

    image: 3 x H x W in [0, 1]. Images with a long side over ``max_side`` are refined at that size and the result
    upsampled (PAMR's cost and memory grow with pixels x neighbours x iterations).
    """
    x = image.float().unsqueeze(0)
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

