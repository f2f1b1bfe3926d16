"""Cross-attention fusion: query patch tokens attend to text tokens, masked support tokens and prototypes.

Keys per (query, class) pair are a variable-length set: [null, text?, fg prototype?, bg prototype?,
support foreground cells...]. Missing inputs (zero-shot has no supports, examples-only has no text)
simply contribute no keys; the learned null token keeps the set non-empty. Padding is masked out.
Classes of the kinds in ``HeadConfig.agnostic_kinds`` (by default those given with examples) do not reach it:
the head reads them through similarity maps only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

KEY_TYPES = ("null", "text", "fg_proto", "bg_proto", "support_fg", "negative")


class FusionLayer(nn.Module):
    """Pre-norm cross-attention then FFN on query tokens."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, q: Tensor, kv: Tensor, kv_pad: Tensor) -> Tensor:
        """q: P x Lq x d, kv: P x Lk x d, kv_pad: P x Lk (True = padding) -> P x Lq x d."""
        kvn = self.norm_kv(kv)
        q = q + self.attn(self.norm_q(q), kvn, kvn, key_padding_mask=kv_pad, need_weights=False)[0]
        return q + self.ff(self.norm_ff(q))


class CrossAttentionFusion(nn.Module):
    """Projects query/keys to a common width and stacks FusionLayers."""

    def __init__(self, query_dim: int, text_dim: int, support_dim: int, dim: int = 64, heads: int = 4,
                 layers: int = 2) -> None:
        super().__init__()
        self.q_proj = nn.Linear(query_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.support_proj = nn.Linear(support_dim, dim)
        self.type_embed = nn.Embedding(len(KEY_TYPES), dim)
        self.null = nn.Parameter(torch.zeros(dim))
        self.layers = nn.ModuleList([FusionLayer(dim, heads) for _ in range(layers)])
        self.dim = dim

    def build_keys(self, text: Tensor | None, fg_proto: Tensor | None, bg_proto: Tensor | None,
                   support_cells: list[Tensor], negatives: Tensor | None = None) -> Tensor:
        """One pair's key set: L x d. text: D; protos: support_dim; support_cells: list of M_i x support_dim."""
        te = self.type_embed.weight
        keys = [(self.null + te[0]).unsqueeze(0)]
        if text is not None:
            keys.append((self.text_proj(text) + te[1]).unsqueeze(0))
        if fg_proto is not None:
            keys.append((self.support_proj(fg_proto) + te[2]).unsqueeze(0))
        if bg_proto is not None:
            keys.append((self.support_proj(bg_proto) + te[3]).unsqueeze(0))
        for cells in support_cells:
            if cells.numel():
                keys.append(self.support_proj(cells) + te[4])
        if negatives is not None and negatives.numel():
            keys.append(self.support_proj(negatives) + te[5])
        return torch.cat(keys, 0)

    def forward(self, query: Tensor, keys: list[Tensor]) -> Tensor:
        """query: P x Lq x query_dim; keys: P tensors (L_i x d) -> P x Lq x d."""
        lmax = max(k.shape[0] for k in keys)
        kv = query.new_zeros(len(keys), lmax, self.dim)
        pad = torch.ones(len(keys), lmax, dtype=torch.bool, device=query.device)
        for i, k in enumerate(keys):
            kv[i, : k.shape[0]] = k
            pad[i, : k.shape[0]] = False
        q = self.q_proj(query)
        for layer in self.layers:
            q = layer(q, kv, pad)
        return q
