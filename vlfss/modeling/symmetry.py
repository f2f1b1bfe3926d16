"""Dense features averaged over the pixel grid's symmetries (mirrors, quarter turns): test-time augmentation.

A frozen encoder's features of a degraded image carry noise that a mirrored or turned copy carries differently;
encoding the copies in one batch, mapping each copy's feature maps back onto the original grid and averaging
them keeps what the copies agree on. ``flip`` uses the image and its left-right mirror (2 encodes), ``d8`` the
eight turns and mirrors of the square (the dihedral group; for a non-square input the four that keep its shape).
Used for the images the quality gate sends to the robust tower (``SegmenterConfig.robust_symmetry``): the embedded
tiny CLIP's world has no up or down, and that tower was trained with turns and mirrors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .backbones.base import FrozenBackbone
from .config import SYMMETRIES
from .dense import DenseFeatures

Transform = tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]  # (forward, its inverse) on ... x H x W


def _turn(k: int, mirror: bool) -> Transform:
    """Mirror left-right (if ``mirror``) then turn by k quarter turns; the inverse undoes both in reverse order."""
    def fwd(t: Tensor) -> Tensor:
        return torch.rot90(t.flip(-1) if mirror else t, k, (-2, -1))

    def inv(t: Tensor) -> Tensor:
        t = torch.rot90(t, -k, (-2, -1))
        return t.flip(-1) if mirror else t

    return fwd, inv


def grid_transforms(mode: str, square: bool = True) -> list[Transform]:
    """The (forward, inverse) pairs of ``mode``: none -> identity; flip -> identity and left-right mirror; d8 -> the
    eight turns and mirrors (``square``) or the four that keep a non-square shape (identity, both mirrors, half
    turn). The identity comes first."""
    if mode not in SYMMETRIES:
        raise ValueError(f"unknown symmetry {mode!r}; choose one of {', '.join(SYMMETRIES)}")
    if mode == "none":
        return [_turn(0, False)]
    if mode == "flip":
        return [_turn(0, False), _turn(0, True)]
    turns = (0, 1, 2, 3) if square else (0, 2)
    return [_turn(k, m) for k in turns for m in (False, True)]


def dense_symmetric(backbone: FrozenBackbone, images: Tensor, variant: str, mode: str,
                    max_batch: int = 64) -> DenseFeatures:
    """``backbone.dense`` of ``images`` (B x 3 x H x W) averaged over ``mode``'s copies, each copy's maps mapped back
    to the input grid first. The copies of a small batch (B x copies <= ``max_batch``) are encoded in one batch; a
    larger one (the windows of a big image) copy by copy into running sums, so memory stays about that of one plain
    encode. ``none``: one plain encode."""
    ops = grid_transforms(mode, images.shape[-1] == images.shape[-2])
    if len(ops) == 1:
        return backbone.dense(images, variant)
    n = len(ops)
    if len(images) * n <= max_batch:
        out = backbone.dense(torch.cat([fwd(images) for fwd, _ in ops]), variant)

        def mean_back(t: Tensor) -> Tensor:
            return torch.stack([inv(c.float()) for (_, inv), c in zip(ops, t.chunk(n))]).mean(0).to(t.dtype)

        return DenseFeatures(taps=[mean_back(t) for t in out.taps], z=mean_back(out.z),
                             pooled=torch.stack([c.float() for c in out.pooled.chunk(n)]).mean(0).to(out.pooled.dtype))
    acc: DenseFeatures | None = None
    for fwd, inv in ops:  # one copy at a time: one encode's activations, and one set of sums
        f = backbone.dense(fwd(images), variant)
        part = DenseFeatures(taps=[inv(t.float()) for t in f.taps], z=inv(f.z.float()), pooled=f.pooled.float())
        acc = part if acc is None else DenseFeatures(taps=[a + b for a, b in zip(acc.taps, part.taps)],
                                                     z=acc.z + part.z, pooled=acc.pooled + part.pooled)
        dtype = (f.taps[0].dtype, f.z.dtype, f.pooled.dtype)
    return DenseFeatures(taps=[(t / n).to(dtype[0]) for t in acc.taps], z=(acc.z / n).to(dtype[1]),
                         pooled=(acc.pooled / n).to(dtype[2]))
