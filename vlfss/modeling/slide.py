"""Sliding-window geometry and stitching: the pure maths of ``inference: slide``.

A large image is cut into windows of the encoder's native input size with overlap (MMSeg's "slide" mode, as
SCLIP / ClearCLIP / ProxyCLIP evaluate); every window is encoded in one batch, and the windows' patch features are
stitched back into ONE feature grid for the whole image by averaging the cells where windows overlap. All later
scoring (text, prototypes, background, the learned head) then runs once on that global grid, so the evidence stays
global: prototypes and calibration come from the whole query and the whole supports, not per tile.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import InputError


def window_geometry(window: int, stride: int | None, patch: int) -> tuple[int, int]:
    """(window, stride) in pixels, checked: positive, no gaps, multiples of the patch size. ``stride`` None: about
    2/3 of the window, rounded to the patch size."""
    stride = stride or max(patch, int(round(window * 2 / 3 / patch)) * patch)
    if window <= 0 or stride <= 0:
        raise InputError(f"window={window} and stride={stride} must be positive; e.g. window=96 stride=64")
    if stride > window:
        raise InputError(f"stride={stride} is larger than window={window}: windows would leave gaps; use "
                         f"stride <= window")
    if window % patch or stride % patch:
        raise InputError(f"window={window} and stride={stride} must be multiples of the patch size {patch}")
    return window, stride


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows covering ``length`` (the last window ends exactly at ``length``; one window at 0 when
    ``length <= window``). All arguments in the same unit (pixels or patch cells)."""
    if length <= window:
        return [0]
    n = math.ceil((length - window) / stride) + 1
    starts = [min(i * stride, length - window) for i in range(n)]
    return sorted(set(starts))


def window_boxes(height: int, width: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(top, left) of every window over a height x width canvas, row-major."""
    return [(y, x) for y in window_starts(height, window, stride) for x in window_starts(width, window, stride)]


def stitch(cells: Tensor, boxes: list[tuple[int, int]], grid: tuple[int, int]) -> Tensor:
    """Average per-window feature grids into one grid.

    cells: K x C x g x g window features; boxes: (top, left) of each window in cell units; grid: (GH, GW) of the
    whole canvas. Returns C x GH x GW, each cell the mean over the windows that cover it.
    """
    k, c, gh, gw = cells.shape
    out = cells.new_zeros(c, *grid)
    count = cells.new_zeros(1, *grid)
    for i, (y, x) in enumerate(boxes):
        out[:, y:y + gh, x:x + gw] += cells[i]
        count[:, y:y + gh, x:x + gw] += 1
    if bool((count == 0).any()):
        raise ValueError("windows do not cover the grid")  # a bug in the caller's geometry, not user input
    return out / count


def slide_canvas(height: int, width: int, window: int, patch: int) -> tuple[int, int]:
    """The canvas (pixels) an image is resized to for sliding: sides rounded to multiples of the patch size, and at
    least one window in each direction (a smaller image is upsampled to the window rather than padded)."""
    h = max(window, int(round(height / patch)) * patch)
    w = max(window, int(round(width / patch)) * patch)
    return h, w


def cut_windows(image: Tensor, boxes: list[tuple[int, int]], window: int) -> Tensor:
    """3 x H x W -> K x 3 x window x window crops at ``boxes`` (pixels)."""
    return torch.stack([image[:, y:y + window, x:x + window] for y, x in boxes])
