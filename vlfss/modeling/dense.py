"""Dense features from a CLIP ViT: multi-layer patch-token taps and text-aligned patch embeddings.

The plain last-layer patch tokens of CLIP align poorly with text; the training-free fixes rewrite
only the last block (design.md §4):

* ``plain``      the block as trained;
* ``maskclip``   value path only: ``out_proj(v)`` (no attention mixing, no residual, no FFN);
* ``sclip``      correlative self-attention ``softmax(q q^T) + softmax(k k^T)``, residual and FFN kept;
* ``clearclip``  ``softmax(q q^T)`` attention, no residual, no FFN;
* ``naclip``     ``softmax(k k^T + gaussian neighbourhood)``, no residual, no FFN.

Then ``ln_post`` and ``proj`` map every token to the joint space. The functions here are pure: they
read a :class:`ViTParts` description (filled by each backbone adapter) and never mutate inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VARIANTS = ("plain", "maskclip", "sclip", "clearclip", "naclip")


@dataclass
class BlockParts:
    """The pieces of one pre-norm transformer block that the last-block variants recombine."""

    ln_1: nn.Module
    qkv: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]  # B x L x C -> 3 x (B x heads x L x head_dim)
    out_proj: nn.Module
    ln_2: nn.Module
    mlp: nn.Module
    forward: Callable[[Tensor], Tensor]  # the block as trained
    ls_1: nn.Module = field(default_factory=nn.Identity)
    ls_2: nn.Module = field(default_factory=nn.Identity)


@dataclass
class ViTParts:
    """A CLIP vision transformer, described independently of the library it comes from."""

    patch_size: int
    native_grid: tuple[int, int]  # grid the positional embedding was trained for
    patchify: Callable[[Tensor], Tensor]  # B x 3 x H x W -> B x C x h x w
    class_embedding: Tensor  # C
    pos_embedding: Tensor  # (1 + h0*w0) x C
    ln_pre: nn.Module
    blocks: list[BlockParts]
    ln_post: nn.Module
    proj: Callable[[Tensor], Tensor]  # ... x C -> ... x D
    pool_type: str = "tok"  # 'tok' (class token) or 'avg' (mean of patch tokens)
    final_ln_after_pool: bool = False


@dataclass
class DenseFeatures:
    """Output of ``dense``: taps for the learned head, text-aligned embeddings for similarity."""

    taps: list[Tensor]  # each B x C x h x w (intermediate block outputs, channels = width)
    z: Tensor  # B x D x h x w text-aligned patch embeddings (not normalised)
    pooled: Tensor  # B x D global image embedding (as encode_image, not normalised)


def interpolate_pos_embed(pos: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> Tensor:
    """Bicubic resize of the patch part of a (1 + h*w) x C positional embedding to another grid."""
    if tuple(src_grid) == tuple(dst_grid):
        return pos
    cls, grid = pos[:1], pos[1:]
    c = grid.shape[-1]
    grid = grid.reshape(1, src_grid[0], src_grid[1], c).permute(0, 3, 1, 2)  # 1 x C x h0 x w0
    grid = F.interpolate(grid.float(), size=dst_grid, mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(-1, c)], dim=0)


def gaussian_neighbourhood(grid: tuple[int, int], sigma: float, device=None) -> Tensor:
    """(1 + h*w) x (1 + h*w) additive attention bias: -d^2 / (2 sigma^2) between patch positions (NACLIP)."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    pts = torch.stack([ys.flatten(), xs.flatten()], 1).float()  # hw x 2
    d2 = torch.cdist(pts, pts) ** 2
    bias = torch.zeros(1 + h * w, 1 + h * w, device=device)
    bias[1:, 1:] = -d2 / (2 * sigma**2)
    return bias


def _attend(logits: Tensor, v: Tensor) -> Tensor:
    return torch.softmax(logits, dim=-1) @ v


def last_block(block: BlockParts, x: Tensor, variant: str, grid: tuple[int, int], naclip_sigma: float = 5.0) -> Tensor:
    """Apply the last block in one of the training-free variants. x: B x L x C -> B x L x C."""
    if variant == "plain":
        return block.forward(x)
    y = block.ln_1(x)
    q, k, v = block.qkv(y)  # B x heads x L x hd
    b, nh, length, hd = q.shape
    scale = hd**-0.5

    def merge(t: Tensor) -> Tensor:  # B x heads x L x hd -> B x L x C
        return t.transpose(1, 2).reshape(b, length, nh * hd)

    if variant == "maskclip":
        return block.out_proj(merge(v))
    if variant == "sclip":
        att = _attend(q @ q.transpose(-1, -2) * scale, v) + _attend(k @ k.transpose(-1, -2) * scale, v)
        x = x + block.ls_1(block.out_proj(merge(att)))
        return x + block.ls_2(block.mlp(block.ln_2(x)))
    if variant == "clearclip":
        return block.out_proj(merge(_attend(q @ q.transpose(-1, -2) * scale, v)))
    if variant == "naclip":
        bias = gaussian_neighbourhood(grid, naclip_sigma, device=x.device).to(k.dtype)
        return block.out_proj(merge(_attend(k @ k.transpose(-1, -2) * scale + bias, v)))
    raise ValueError(f"unknown dense variant {variant!r}; choose one of {VARIANTS}")


def _pool(parts: ViTParts, x: Tensor) -> Tensor:
    """Global embedding from final tokens, exactly as the library's encode_image does it."""
    if parts.final_ln_after_pool:
        pooled = x[:, 1:].mean(1) if parts.pool_type == "avg" else x[:, 0]
        return parts.proj(parts.ln_post(pooled))
    x = parts.ln_post(x)
    pooled = x[:, 1:].mean(1) if parts.pool_type == "avg" else x[:, 0]
    return parts.proj(pooled)


def vit_dense(
    parts: ViTParts,
    images: Tensor,
    variant: str = "plain",
    taps: tuple[int, ...] = (),
    pos_embed: Tensor | None = None,
    naclip_sigma: float = 5.0,
) -> DenseFeatures:
    """Run the ViT once on normalised images (B x 3 x H x W, H and W multiples of the patch size).

    ``taps`` are 0-based block indices whose outputs are returned as B x C x h x w maps; ``pos_embed``
    is the positional embedding already resized to this grid (callers cache it per grid size).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown dense variant {variant!r}; choose one of {VARIANTS}")
    feats = parts.patchify(images)  # B x C x h x w
    b, c, h, w = feats.shape
    if pos_embed is None:
        pos_embed = interpolate_pos_embed(parts.pos_embedding, parts.native_grid, (h, w))
    x = feats.flatten(2).transpose(1, 2)  # B x hw x C
    cls = parts.class_embedding.to(x.dtype).view(1, 1, c).expand(b, 1, c)
    x = torch.cat([cls, x], dim=1) + pos_embed.to(x.dtype)
    x = parts.ln_pre(x)
    tapped: dict[int, Tensor] = {}
    n = len(parts.blocks)
    for i, blk in enumerate(parts.blocks[:-1]):
        x = blk.forward(x)
        if i in taps:
            tapped[i] = x
    final = parts.blocks[-1].forward(x)
    if n - 1 in taps:
        tapped[n - 1] = final
    pooled = _pool(parts, final)
    dense_in = final if variant == "plain" else last_block(parts.blocks[-1], x, variant, (h, w), naclip_sigma)
    z = parts.proj(parts.ln_post(dense_in[:, 1:]))  # B x hw x D
    z = z.transpose(1, 2).reshape(b, -1, h, w)
    tap_maps = [tapped[i][:, 1:].transpose(1, 2).reshape(b, c, h, w) for i in sorted(taps)]
    return DenseFeatures(taps=tap_maps, z=z, pooled=pooled)


def default_taps(num_layers: int, count: int = 3) -> tuple[int, ...]:
    """Evenly spaced 0-based block indices ending at the last block (12 layers -> (3, 7, 11))."""
    count = max(1, min(count, num_layers))
    step = num_layers / count
    return tuple(sorted({int(math.ceil(step * (j + 1))) - 1 for j in range(count)}))
