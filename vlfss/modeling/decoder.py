"""Light decoder: fused tokens + similarity maps at patch resolution, two x2 upsampling stages with skips
from intermediate encoder layers (and a shallow RGB stem for edges), one foreground logit per pair."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4 if cout % 4 == 0 else 1, cout), nn.GELU())


class Decoder(nn.Module):
    """(fused P x d x h x w, sims P x S x h x w, taps list of P x C x h x w, rgb P x 3 x H x W) -> P x 1 x 4h x 4w."""

    def __init__(self, dim: int, sim_channels: int, tap_dim: int, num_taps: int, hidden: int = 64) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(_conv(dim + sim_channels, hidden), _conv(hidden, hidden))
        self.tap_proj = nn.ModuleList([nn.Conv2d(tap_dim, hidden, 1) for _ in range(num_taps)])
        self.stage2 = _conv(hidden, hidden // 2)
        self.rgb = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GELU())
        self.stage3 = _conv(hidden // 2 + 16, hidden // 2)
        self.head = nn.Conv2d(hidden // 2, 1, 1)

    def forward(self, fused: Tensor, sims: Tensor, taps: list[Tensor], rgb: Tensor, raw: Tensor | None = None
                ) -> Tensor:
        """``raw`` (P, bool): pairs that read the fused tokens and encoder skips; the others read neither (the
        similarity maps and the RGB stem only). None: every pair reads them."""
        keep = None if raw is None else raw.to(sims.dtype)[:, None, None, None]
        if keep is not None:
            fused = fused * keep
        x = self.stage1(torch.cat([fused, sims], 1))  # P x hidden x h x w
        if taps:  # deepest tap at patch resolution, shallower ones after the first upsampling
            skip = self.tap_proj[-1](taps[-1])
            x = x + (skip if keep is None else skip * keep)
        h, w = x.shape[-2:]
        x = F.interpolate(x, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
        for proj, tap in zip(self.tap_proj[:-1], taps[:-1]):
            skip = proj(tap) if keep is None else proj(tap) * keep
            x = x + F.interpolate(skip, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
        x = self.stage2(x)
        x = F.interpolate(x, size=(4 * h, 4 * w), mode="bilinear", align_corners=False)
        r = F.interpolate(rgb, size=(4 * h, 4 * w), mode="bilinear", align_corners=False)
        x = self.stage3(torch.cat([x, self.rgb(r)], 1))
        return self.head(x)
