"""The learned head: cross-attention fusion + decoder, a residual correction of the training-free log-odds.

Per (query, class) pair the decoder reads similarity maps (``pair_similarity_maps``), the training-free prior's
log-odds, encoder skips and fused tokens (query cells attending to the class's keys, ``support_keys``); pairs of
the ``HeadConfig.agnostic_kinds`` read only the similarity maps and the prior. Pairs are ordered query-major:
pair ``b * N + n`` is query b, class n.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from . import functional as fn
from . import training_free as tf
from .config import HeadConfig
from .decoder import Decoder
from .fusion import CrossAttentionFusion
from .types import INPUT_KINDS, ClassSpec, Encoded, input_kind


def feature_levels(e: Encoded) -> list[Tensor]:
    """The levels the head compares at: every encoder tap, then z (each C_l x h x w)."""
    return [*e.taps, e.z]


@dataclass
class SupportSide:
    """The head's work that depends on the classes alone (``SegHead.support_side``): done once per request and
    shared by every query image, instead of once per (query, class) pair."""

    maps: list[list[tuple[Tensor, Tensor, Tensor]] | None]  # per class, per level: ``fn.support_map_side``
    keys: list[Tensor | None]  # per class: its fusion keys L x d (None for the class-agnostic kinds)


def support_map_sides(spec: ClassSpec) -> list[tuple[Tensor, Tensor, Tensor]] | None:
    """Per feature level, the supports' half of the similarity maps (``fn.support_map_side``); None without
    supports."""
    if not spec.supports:
        return None
    masks = torch.stack([m for _, m in spec.supports])
    levels = len(feature_levels(spec.supports[0][0]))
    return [fn.support_map_side(torch.stack([feature_levels(e)[li] for e, _ in spec.supports]), masks)
            for li in range(levels)]  # each level: K x C_l x hs x ws


def pair_similarity_maps(query: Encoded, spec: ClassSpec, text_scale: Tensor,
                         sides: list[tuple[Tensor, Tensor, Tensor]] | None = None) -> Tensor:
    """The class-agnostic inputs of one pair: S x h x w with S = 1 + 3 * levels + 2.

    Channels: the query's text cosine times ``text_scale / 10`` (0 without text); per level, the three
    ``fn.support_similarity_maps`` (0 without supports); two flags, 1 where text / supports are given.
    ``sides``: ``support_map_sides(spec)`` when the caller has it (computed here otherwise).
    """
    q_levels = feature_levels(query)
    h, w = q_levels[0].shape[-2:]
    if spec.text is not None:
        zq = F.normalize(query.z, dim=0)
        sims = [torch.einsum("dhw,d->hw", zq, spec.text.to(zq.dtype)).unsqueeze(0) * text_scale / 10]
    else:
        sims = [q_levels[0].new_zeros(1, h, w)]
    if spec.supports:
        sides = sides if sides is not None else support_map_sides(spec)
        sims.extend(fn.query_similarity_maps(ql, *side) for ql, side in zip(q_levels, sides))  # type: ignore[arg-type]
    else:
        sims.extend([q_levels[0].new_zeros(1, h, w)] * (3 * len(q_levels)))
    flags = torch.stack([torch.full((h, w), float(spec.text is not None)),
                         torch.full((h, w), float(bool(spec.supports)))]).to(sims[0])
    return torch.cat(sims + [flags], 0)


def support_keys(spec: ClassSpec, negatives: list[tuple[Encoded, Tensor]], max_cells: int
                 ) -> tuple[Tensor | None, Tensor | None, list[Tensor], Tensor | None]:
    """What the fusion's keys are made of for one class, on all levels stacked (S = sum of C_l channels):
    (foreground prototype S, background prototype S, [foreground cells M x S, at most about ``max_cells``],
    negatives' foreground prototypes R x S); None / [] for what the class lacks."""
    if not spec.supports:
        return None, None, [], None
    feats = torch.stack([torch.cat(feature_levels(e), 0) for e, _ in spec.supports])  # K x S x h x w
    masks = torch.stack([m for _, m in spec.supports])
    fg_w, bg_w = fn.mask_weights(masks, tuple(feats.shape[-2:]))
    fg_proto = fn.masked_average_pool(feats, fg_w).mean(0)
    bg_proto = fn.masked_average_pool(feats, bg_w).mean(0)
    cells = fn.strided_rows(fn.foreground_cells(feats, fg_w), max_cells)
    neg = None
    if negatives:
        nf = torch.stack([torch.cat(feature_levels(e), 0) for e, _ in negatives])
        nfg, _ = fn.mask_weights(torch.stack([m for _, m in negatives]), tuple(nf.shape[-2:]))
        neg = fn.masked_average_pool(nf, nfg)
    return fg_proto, bg_proto, [cells], neg


def apply_prior(out: Tensor, prior: Tensor | None, answered: Tensor, residual: bool) -> Tensor:
    """The head's answer from the decoder's ``out`` (B x N x H x W) and the prior (B x N x h x w, upsampled to
    H x W): ``out + prior`` where residual, and the prior alone for classes the head does not answer
    (``answered``: N bools)."""
    if not residual and bool(answered.all()):
        return out
    prior = F.interpolate(prior.to(out.dtype), size=out.shape[-2:], mode="bilinear", align_corners=False)
    if residual:
        out = out + prior
    return torch.where(answered[None, :, None, None], out, prior)  # kinds the head does not answer


class SegHead(nn.Module):
    """Learned fusion + decoder: per (query, class) pair, a foreground log-odds map at 4x patch resolution.

    With ``cfg.residual_prior`` the decoder's output is added to the training-free log-odds (``prior``) and its
    last layer starts at zero, so an untrained head is the training-free model and training learns corrections.
    """

    def __init__(self, tap_dim: int, num_taps: int, embed_dim: int, cfg: HeadConfig, prior_bg_prompts: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.tap_dim, self.num_taps, self.embed_dim = tap_dim, num_taps, embed_dim
        tf.check_config(cfg.prior, num_taps, "head.prior.")
        for key in ("use_for", "agnostic_kinds"):
            bad = [k for k in getattr(cfg, key) if k not in INPUT_KINDS]
            if bad:
                raise InputError(f"head.{key}={list(getattr(cfg, key))!r}: {bad[0]!r} is not an input kind; use any "
                                 f"of {', '.join(INPUT_KINDS)}")
        # What the training-free prior needs from the backbone (new_head fills them; saved with the weights):
        # text logit scale, text background level (prior_has_level 1: a fixed level, e.g. -bias/scale for SigLIP
        # models; else the max cosine to background prompt embeddings).
        self.register_buffer("prior_scale", torch.tensor(100.0))
        self.register_buffer("prior_level", torch.tensor(0.0))
        self.register_buffer("prior_has_level", torch.tensor(0.0))
        self.register_buffer("prior_bg_text", torch.zeros(prior_bg_prompts, embed_dim))  # M x D
        support_dim = tap_dim * num_taps + embed_dim
        self.fusion = CrossAttentionFusion(support_dim, embed_dim, support_dim, cfg.dim, cfg.heads, cfg.layers)
        # text, (fg, bg, max-corr) per level, 2 availability flags, the prior's log-odds
        self.sim_channels = 1 + 3 * (num_taps + 1) + 2 + int(cfg.prior_input)
        self.decoder = Decoder(cfg.dim, self.sim_channels, tap_dim, num_taps, cfg.hidden)
        self.text_scale = nn.Parameter(torch.tensor(10.0))
        if cfg.residual_prior:  # zero-initialised last layer: an untrained head predicts the training-free log-odds
            nn.init.zeros_(self.decoder.head.weight)
            nn.init.zeros_(self.decoder.head.bias)

    def config_dict(self) -> dict:
        """What ``head_file`` records to rebuild this head: sizes, config, number of background prompts."""
        return {"tap_dim": self.tap_dim, "num_taps": self.num_taps, "embed_dim": self.embed_dim,
                "head": asdict(self.cfg), "prior_bg_prompts": int(self.prior_bg_text.shape[0])}

    def uses_prior(self, specs: list[ClassSpec]) -> bool:
        """Whether ``forward`` needs the training-free prior for these classes (as residual base, decoder input or
        the answer to a kind the head declines)."""
        return (self.cfg.residual_prior or self.cfg.prior_input
                or any(input_kind(s) not in self.cfg.use_for for s in specs))

    def prior_state(self, specs: list[ClassSpec], negatives: list[tuple[Encoded, Tensor]]) -> tf.SupportState:
        """The prior's support-side work (covariance, prototypes, text fits), to share over query images."""
        return tf.support_state(specs, negatives, self.cfg.prior)

    def prior(self, query: Encoded, specs: list[ClassSpec], negatives: list[tuple[Encoded, Tensor]],
              state: tf.SupportState | None = None) -> Tensor:
        """The training-free log-odds N x h x w that the decoder's output corrects (``cfg.prior``); ``state``:
        ``prior_state(specs, negatives)`` when the caller has it."""
        level = float(self.prior_level) if float(self.prior_has_level) else None
        bg = self.prior_bg_text if len(self.prior_bg_text) else None
        text_bg = tf.text_background(query.z.unsqueeze(0), level, bg, None)
        return tf.training_free_logits(query, specs, negatives, self.cfg.prior, float(self.prior_scale), text_bg,
                                       state)

    def support_side(self, specs: list[ClassSpec], negatives: list[tuple[Encoded, Tensor]]) -> SupportSide:
        """The query-independent half of ``forward`` (support prototypes and cells per level, fusion keys), to
        share over query images as ``forward(..., support=)``; compute it under ``torch.no_grad()`` unless the
        head is being trained through it."""
        reads_raw = [input_kind(s) not in self.cfg.agnostic_kinds for s in specs]
        keys = [self.fusion.build_keys(s.text, *support_keys(s, negatives, self.cfg.max_support_cells))
                if r else None for s, r in zip(specs, reads_raw)]
        return SupportSide([support_map_sides(s) for s in specs], keys)

    def fuse(self, queries: list[Encoded], specs: list[ClassSpec], negatives: list[tuple[Encoded, Tensor]],
             reads_raw: list[bool], keys: list[Tensor | None] | None = None) -> Tensor:
        """Fused tokens P x d x h x w: each raw pair's query cells (all levels stacked) attending to its class's
        keys; zero for the class-agnostic pairs, for which the fusion does not run. ``keys``: per class, as
        ``support_side`` makes them (computed here otherwise)."""
        h, w = queries[0].z.shape[-2:]
        if keys is None:
            keys = [self.fusion.build_keys(s.text, *support_keys(s, negatives, self.cfg.max_support_cells))
                    if r else None for s, r in zip(specs, reads_raw)]
        rows = [(b * len(specs) + n, q, keys[n]) for b, q in enumerate(queries) for n in range(len(specs))
                if reads_raw[n]]
        fused = queries[0].z.new_zeros(len(queries) * len(specs), self.fusion.dim, h, w)
        if rows:
            tokens = torch.stack([torch.cat(feature_levels(q), 0).flatten(1).T for _, q, _ in rows])  # R x hw x S
            f = self.fusion(tokens, [k for _, _, k in rows])  # R x hw x d
            fused[[i for i, _, _ in rows]] = f.transpose(1, 2).reshape(len(rows), -1, h, w)
        return fused

    def forward(self, queries: list[Encoded], specs: list[ClassSpec],
                negatives: list[tuple[Encoded, Tensor]] | None = None, prior: Tensor | None = None,
                support: SupportSide | None = None) -> Tensor:
        """Foreground log-odds B x N x h4 x w4 for all queries (same encoder size) and classes. ``prior``
        (B x N x h x w): ``self.prior`` of the queries when the caller has it already; ``support``:
        ``self.support_side(specs, negatives)`` when the caller has it (the same numbers, once per request)."""
        negatives = negatives or []
        h, w = queries[0].z.shape[-2:]
        device = queries[0].z.device
        reads_raw = [input_kind(s) not in self.cfg.agnostic_kinds for s in specs]
        maps = support.maps if support is not None else [support_map_sides(s) for s in specs]  # once per class
        sims = torch.stack([pair_similarity_maps(q, s, self.text_scale, m) for q in queries
                            for s, m in zip(specs, maps)])  # P x S x h x w
        fused = self.fuse(queries, specs, negatives, reads_raw, None if support is None else support.keys)
        if prior is None and self.uses_prior(specs):
            state = self.prior_state(specs, negatives)  # once for all the queries
            prior = torch.stack([self.prior(q, specs, negatives, state) for q in queries])  # B x N x h x w
        if self.cfg.prior_input:  # log-odds squashed to a conv-friendly range
            sims = torch.cat([sims, torch.tanh(prior.reshape(-1, 1, h, w).to(sims.dtype) / 4)], 1)
        taps = [torch.stack([q.taps[i] for q in queries for _ in specs]) for i in range(self.num_taps)]
        rgb = torch.stack([q.rgb for q in queries for _ in specs])
        raw = torch.tensor(reads_raw * len(queries), device=device)
        out = self.decoder(fused, sims, taps, rgb, None if bool(raw.all()) else raw)
        out = out.view(len(queries), len(specs), *out.shape[-2:])
        answered = torch.tensor([input_kind(s) in self.cfg.use_for for s in specs], device=device)
        return apply_prior(out, prior, answered, self.cfg.residual_prior)
