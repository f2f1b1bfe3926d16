"""What meta-training minimises: the episode loss, the trainable module DDP wraps, and first-order MAML.

* **One model for every mode.** Each batch mixes text-only (zero-shot), examples-only (K-shot) and text + K-shot
  episodes (``EpisodeConfig``) and some N-way ones. Binary episodes use BCE + dice on the foreground log-odds,
  N-way ones cross-entropy + dice over ``nway_logits`` (background logit 0), exactly the label rule
  ``Segmenter.segment`` applies.
* **Loss resolution.** The head predicts at 4x the patch grid; its logits are upsampled bilinearly to the encoder
  input size (the image as the encoder saw it, e.g. 96 x 96), where the masks were resized with nearest neighbour.
* **Meta algorithms.** ``episodic`` minimises the query loss directly (``TrainModule``); ``fomaml`` adapts a copy
  of the head for ``inner_steps`` SGD steps on the episode's supports (``modeling.adapt.support_loss``) and
  applies the query-loss gradient at the adapted weights to the initialisation (first order).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modeling import functional as fn
from ..modeling.adapt import support_loss, support_priors
from ..modeling.head import SegHead
from ..modeling.types import ClassSpec, Encoded
from .views import Prepared


def episode_loss(head: SegHead, query: Encoded, specs: list[ClassSpec], target: Tensor,
                 dice_weight: float = 1.0) -> Tensor:
    """BCE + dice (one class) or CE + dice over nway_logits (N classes), logits upsampled to ``target``'s size."""
    fg = head([query], specs)  # 1 x N x 4h x 4w
    logits = F.interpolate(fg, size=tuple(target.shape[-2:]), mode="bilinear", align_corners=False)
    if len(specs) == 1:
        return fn.bce_dice_loss(logits[:, 0], target.unsqueeze(0), dice_weight)
    return fn.nway_ce_dice_loss(fn.nway_logits(logits), target.unsqueeze(0), dice_weight)


def specs_with_text(p: Prepared, emb: Tensor | None) -> list[ClassSpec]:
    """The episode's specs with rows of a learned prompt table (C x D, by class id) as text where text is used."""
    if emb is None or not p.use_text:
        return p.specs
    return [replace(s, text=emb[c]) for s, c in zip(p.specs, p.class_ids, strict=True)]


class TrainModule(nn.Module):
    """The trainable modules (head, optional unified prompt) and the batch loss: what DDP wraps."""

    def __init__(self, head: SegHead, prompt: nn.Module | None = None, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.head = head
        self.prompt = prompt
        self.dice_weight = dice_weight

    def text_table(self, batch: Sequence[Prepared]) -> Tensor | None:
        """The learned prompt's C x D text embeddings when some episode of ``batch`` uses text (else None)."""
        if self.prompt is None or not any(p.use_text for p in batch):
            return None
        return self.prompt()

    def forward(self, batch: list[Prepared]) -> Tensor:
        emb = self.text_table(batch)
        losses = [episode_loss(self.head, p.query, specs_with_text(p, emb), p.target, self.dice_weight) for p in batch]
        return torch.stack(losses).mean()


def _adapted_copy(module: TrainModule, specs: list[ClassSpec], inner_steps: int, inner_lr: float) -> SegHead:
    """A copy of the head after ``inner_steps`` SGD steps on the supports of ``specs`` (none for text only)."""
    fast = copy.deepcopy(module.head)
    inner = torch.optim.SGD(fast.parameters(), lr=inner_lr)
    priors = support_priors(fast, specs) if inner_steps else None  # the same for every inner step
    for _ in range(inner_steps):
        loss = support_loss(fast, specs, None, module.dice_weight, priors)
        if loss is None:  # text-only episode: nothing to adapt on
            break
        inner.zero_grad(set_to_none=True)
        loss.backward()
        inner.step()
    fast.zero_grad(set_to_none=True)
    return fast


def fomaml_backward(module: TrainModule, batch: list[Prepared], inner_steps: int, inner_lr: float) -> float:
    """First-order MAML: per episode, adapt a copy of the head on its supports (SGD), then put the gradient of
    the query loss at the adapted weights into the initial head's ``.grad`` (and the prompt's, if learned).

    The inner loop changes only the copy; the backbone and the prompt context are never updated there.
    Returns the mean query loss.
    """
    emb = module.text_table(batch)
    fasts, losses = [], []
    for p in batch:
        fast = _adapted_copy(module, specs_with_text(p, emb.detach() if emb is not None else None),
                             inner_steps, inner_lr)
        losses.append(episode_loss(fast, p.query, specs_with_text(p, emb), p.target, module.dice_weight))
        fasts.append(fast)
    total = torch.stack(losses).mean()
    total.backward()
    for fast in fasts:
        for hp, fp in zip(module.head.parameters(), fast.parameters(), strict=True):
            if fp.grad is not None:
                hp.grad = fp.grad.clone() if hp.grad is None else hp.grad + fp.grad
    return float(total.detach())
