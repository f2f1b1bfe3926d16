"""The learned head: cross-attention fusion + decoder, a residual correction of the training-free log-odds."""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from . import functional as fn
from . import training_free as tf
from .config import HeadConfig, TrainingFreeConfig
from .decoder import Decoder
from .fusion import CrossAttentionFusion
from .types import INPUT_KINDS, ClassSpec, Encoded, input_kind


class SegHead(nn.Module):
    """Learned fusion + decoder: per (query, class) pair, a foreground log-odds map at 4x patch resolution.

    With ``cfg.residual_prior`` the decoder's output is added to the training-free log-odds (``prior``) and its
    last layer starts at zero, so an untrained head is the training-free model and training learns corrections.
    """

    def __init__(self, tap_dim: int, num_taps: int, embed_dim: int, cfg: HeadConfig, prior_bg_prompts: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.tap_dim, self.num_taps, self.embed_dim = tap_dim, num_taps, embed_dim
        tf.check_proto_features(cfg.prior_proto_features or "z", num_taps)
        tf.check_shot_pooling(cfg.prior_shot_pooling, "head.prior_shot_pooling")
        for key in ("use_for", "agnostic_kinds"):
            bad = [k for k in getattr(cfg, key) if k not in INPUT_KINDS]
            if bad:
                raise InputError(f"head.{key}={list(getattr(cfg, key))!r}: {bad[0]!r} is not an input kind; use any "
                                 f"of {', '.join(INPUT_KINDS)}")
        tf.check_metric(cfg.prior_metric, cfg.prior_shrinkage, cfg.prior_mahalanobis_scale, "head.prior_")
        # What the training-free prior needs from the backbone (new_head fills them; saved with the weights):
        # text logit scale, text background level (-bias/scale for SigLIP models, where prior_has_level is 1;
        # else the max cosine to background prompt embeddings).
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
        return {"tap_dim": self.tap_dim, "num_taps": self.num_taps, "embed_dim": self.embed_dim,
                "head": asdict(self.cfg), "prior_bg_prompts": int(self.prior_bg_text.shape[0])}

    def prior_config(self) -> TrainingFreeConfig:
        """The training-free settings of the prior: defaults but for the prototype features, shot pooling, cell
        normalisation and metric the head was trained with, recorded in its config."""
        return TrainingFreeConfig(proto_features=self.cfg.prior_proto_features or "z",
                                  shot_pooling=self.cfg.prior_shot_pooling, cell_norm=self.cfg.prior_cell_norm,
                                  metric=self.cfg.prior_metric, shrinkage=self.cfg.prior_shrinkage,
                                  mahalanobis_scale=self.cfg.prior_mahalanobis_scale)

    def uses_prior(self, specs: list[ClassSpec]) -> bool:
        """Whether ``forward`` needs the training-free prior for these classes (as residual base, decoder input or
        the answer to a kind the head declines)."""
        return (self.cfg.residual_prior or self.cfg.prior_input
                or any(input_kind(s) not in self.cfg.use_for for s in specs))

    def prior_state(self, specs: list[ClassSpec], negatives: list[tuple[Encoded, Tensor]]) -> tf.SupportState:
        """The prior's support-side work (covariance, prototypes, text fits), to share over query images."""
        return tf.support_state(specs, negatives, self.prior_config())

    def prior(self, query: Encoded, specs: list[ClassSpec], negatives: list[tuple[Encoded, Tensor]],
              state: tf.SupportState | None = None) -> Tensor:
        """The training-free log-odds N x h x w that the decoder's output corrects (``prior_config``); ``state``:
        ``prior_state(specs, negatives)`` when the caller has it."""
        level = float(self.prior_level) if float(self.prior_has_level) else None
        bg = self.prior_bg_text if len(self.prior_bg_text) else None
        text_bg = tf.text_background(query.z.unsqueeze(0), level, bg, None)
        return tf.training_free_logits(query, specs, negatives, self.prior_config(), float(self.prior_scale),
                                       text_bg, state)

    @staticmethod
    def _levels(e: Encoded) -> list[Tensor]:
        return [*e.taps, e.z]  # per level C_l x h x w

    def pair_inputs(self, query: Encoded, spec: ClassSpec, negatives: list[tuple[Encoded, Tensor]],
                    with_keys: bool = True):
        """Similarity channels (S x h x w) and fusion keys (L x d; None unless ``with_keys``) for one pair."""
        q_levels = self._levels(query)
        h, w = q_levels[0].shape[-2:]
        sims = []
        if spec.text is not None:
            zq = F.normalize(query.z, dim=0)
            sims.append(torch.einsum("dhw,d->hw", zq, spec.text.to(zq.dtype)).unsqueeze(0) * self.text_scale / 10)
        else:
            sims.append(q_levels[0].new_zeros(1, h, w))
        fg_proto = bg_proto = None
        cells: list[Tensor] = []
        neg = None
        if spec.supports:
            for li, ql in enumerate(q_levels):
                feats = torch.stack([self._levels(e)[li] for e, _ in spec.supports])  # K x C x hs x ws
                masks = torch.stack([m for _, m in spec.supports])
                fg_w, bg_w = fn.mask_weights(masks, tuple(feats.shape[-2:]))
                fgp = fn.masked_average_pool(feats, fg_w).mean(0, keepdim=True)
                bgp = fn.masked_average_pool(feats, bg_w).mean(0, keepdim=True)
                sims.append(fn.cosine_map(ql.unsqueeze(0), fgp)[0])
                sims.append(fn.cosine_map(ql.unsqueeze(0), bgp)[0])
                fg_cells = feats.permute(0, 2, 3, 1)[fg_w > 0.25]  # M x C
                if fg_cells.shape[0]:
                    corr = fn.cosine_map(ql.unsqueeze(0), fg_cells)[0].max(0).values.unsqueeze(0)
                else:
                    corr = ql.new_zeros(1, h, w)
                sims.append(corr)
        if spec.supports and with_keys:  # prototypes and cells over all levels, for the fusion's keys
            flat = [torch.cat([lv for lv in self._levels(e)], 0) for e, _ in spec.supports]  # S x h x w each
            masks = torch.stack([m for _, m in spec.supports])
            feats = torch.stack(flat)
            fg_w, bg_w = fn.mask_weights(masks, tuple(feats.shape[-2:]))
            fg_proto = fn.masked_average_pool(feats, fg_w).mean(0)
            bg_proto = fn.masked_average_pool(feats, bg_w).mean(0)
            allc = feats.permute(0, 2, 3, 1)[fg_w > 0.25]
            if allc.shape[0] > self.cfg.max_support_cells:
                stride = -(-allc.shape[0] // self.cfg.max_support_cells)
                allc = allc[::stride]
            cells = [allc]
            if negatives:
                nf = torch.stack([torch.cat(self._levels(e), 0) for e, _ in negatives])
                nm = torch.stack([m for _, m in negatives])
                nfg, _ = fn.mask_weights(nm, tuple(nf.shape[-2:]))
                neg = fn.masked_average_pool(nf, nfg)
        if not spec.supports:
            sims.extend([q_levels[0].new_zeros(1, h, w)] * (3 * len(q_levels)))
        flags = torch.stack([torch.full((h, w), float(spec.text is not None)),
                             torch.full((h, w), float(bool(spec.supports)))]).to(sims[0])
        keys = self.fusion.build_keys(spec.text, fg_proto, bg_proto, cells, neg) if with_keys else None
        return torch.cat(sims + [flags], 0), keys

    def forward(self, queries: list[Encoded], specs: list[ClassSpec],
                negatives: list[tuple[Encoded, Tensor]] | None = None, prior: Tensor | None = None) -> Tensor:
        """Foreground log-odds B x N x h4 x w4 for all queries (same encoder size) and classes. ``prior``
        (B x N x h x w): ``self.prior`` of the queries when the caller has it already."""
        sims, keys, qtok, taps, rgb = [], [], [], [], []
        reads_raw = [input_kind(s) not in self.cfg.agnostic_kinds for s in specs]
        for q in queries:
            qcat = torch.cat(self._levels(q), 0)  # S x h x w
            for spec, r in zip(specs, reads_raw):
                s, k = self.pair_inputs(q, spec, negatives or [], with_keys=r)
                sims.append(s)
                keys.append(k)
                qtok.append(qcat.flatten(1).T)
                taps.append(q.taps)
                rgb.append(q.rgb)
        h, w = queries[0].z.shape[-2:]
        n = len(specs)
        device = queries[0].z.device
        # pairs (query-major) that read raw features (fusion tokens, encoder skips); the class-agnostic others read
        # only similarity maps, the prior and the RGB stem, so the fusion runs for the raw ones only
        raw = torch.tensor(reads_raw * len(queries), device=device)
        fused = qtok[0].new_zeros(len(keys), self.fusion.dim, h, w)
        rows = [i for i, r in enumerate(raw.tolist()) if r]
        if rows:
            f = self.fusion(torch.stack([qtok[i] for i in rows]), [keys[i] for i in rows])  # R x hw x d
            fused[rows] = f.transpose(1, 2).reshape(len(rows), -1, h, w)
        tap_stacks = [torch.stack([t[i] for t in taps]) for i in range(self.num_taps)]
        answered = torch.tensor([input_kind(s) in self.cfg.use_for for s in specs], device=device)
        if prior is None and self.uses_prior(specs):
            state = self.prior_state(specs, negatives or [])  # once for all the queries
            prior = torch.stack([self.prior(q, specs, negatives or [], state) for q in queries])  # B x N x h x w
        sims = torch.stack(sims)
        if self.cfg.prior_input:  # log-odds squashed to a conv-friendly range
            sims = torch.cat([sims, torch.tanh(prior.reshape(-1, 1, h, w).to(sims.dtype) / 4)], 1)
        out = self.decoder(fused, sims, tap_stacks, torch.stack(rgb), None if bool(raw.all()) else raw)
        out = out.view(len(queries), n, *out.shape[-2:])
        if self.cfg.residual_prior or not bool(answered.all()):
            prior = F.interpolate(prior.to(out.dtype), size=out.shape[-2:], mode="bilinear", align_corners=False)
            if self.cfg.residual_prior:
                out = out + prior
            out = torch.where(answered[None, :, None, None], out, prior)  # kinds the head does not answer
        return out

