"""Text prompts: template files, class-name lists, template-ensemble embeddings, learned context (CoOp).

Templates and class names live in the top-level ``prompts/`` folder (installed into the package as
``vlfss/prompts_data``). A template file holds one ``{}`` template per line; a class-name file one
name per line. A learned prompt file is a safetensors file whose header carries JSON metadata
(model id, class names, number of context vectors): it only loads onto the model it was learned on.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn

from ..errors import InputError
from ..io_utils import atomic_save_safetensors

log = logging.getLogger(__name__)

PROMPT_FILE_FORMAT = "vlfss-prompt/1"


def prompts_dir() -> Path:
    """The folder with templates/ and classnames/: installed package data, else the source tree's prompts/."""
    package = Path(__file__).resolve().parents[1]  # vlfss/
    installed = package / "prompts_data"
    if (installed / "templates").is_dir():
        return installed
    return package.parent / "prompts"


def list_templates() -> list[str]:
    return sorted(p.stem for p in (prompts_dir() / "templates").glob("*.txt"))


def load_templates(name_or_path: str = "default") -> list[str]:
    """Templates by set name (``default``, ``imagenet80``, ``synthetic``, ``plain``) or from a file path."""
    path = Path(name_or_path)
    if not path.is_file():
        path = prompts_dir() / "templates" / f"{name_or_path}.txt"
    if not path.is_file():
        raise InputError(f"template set {name_or_path!r} not found; use one of {', '.join(list_templates())} "
                         "or a file with one '{}' template per line")
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    bad = [ln for ln in lines if ln.count("{}") != 1]
    if bad or not lines:
        raise InputError(f"template file {path}: every line needs exactly one '{{}}' (bad: {bad[:2]})")
    return lines


def load_classnames(name_or_path: str) -> list[str]:
    """Class names by list name (``pascal_voc``, ``coco``, ``synthetic``) or from a file path."""
    path = Path(name_or_path)
    if not path.is_file():
        path = prompts_dir() / "classnames" / f"{name_or_path}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in (prompts_dir() / "classnames").glob("*.txt"))
        raise InputError(f"class-name list {name_or_path!r} not found; use one of {', '.join(known)} or a file path")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def warn_if_truncated(texts: list[str], tokenizer, context_length: int) -> None:
    """Warn (once per call) about prompts longer than the text encoder's context; they get truncated."""
    long = []
    for t in texts:
        if hasattr(tokenizer, "encoder") and hasattr(tokenizer, "encode") and not hasattr(tokenizer, "vocab_size"):
            n = len(tokenizer.encode(t)) + 2  # open_clip SimpleTokenizer: + start and end tokens
        elif callable(getattr(tokenizer, "encode", None)):
            n = len(tokenizer.encode(t))
        else:
            continue
        if n > context_length:
            long.append(t)
    if long:
        warnings.warn(f"{len(long)} prompt(s) longer than the context length {context_length} are truncated, "
                      f"e.g. {long[0][:60]!r}; shorten them", stacklevel=3)


def ensemble_text_embeddings(backbone, class_names: list[str], templates: list[str]) -> Tensor:
    """N x D: per class, mean of the normalised embeddings of every template filled with its name, renormalised.

    Each distinct string is encoded once (the backbone caches per string). The class names are first shown to
    ``backbone.check_texts``, which warns (once per text) when a closed-vocabulary model cannot know them.
    """
    if not class_names:
        raise InputError("no class names given")
    backbone.check_texts(list(class_names))
    strings = [t.format(c) for c in class_names for t in templates]
    emb = backbone.encode_text(strings).view(len(class_names), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)


class PromptLearner(nn.Module):
    """M learnable context vectors spliced before the class name in the frozen text tower (CoOp).

    ``per_class=False`` shares one context across classes (unified); ``True`` learns one per class.
    Only ``ctx`` trains; the text encoder stays frozen (its parameters never require grad).

    ``set_residual(anchor)`` makes the output a residual over fixed embeddings (e.g. the hand-written template
    ensemble): ``normalize(anchor + f(ctx) - f(ctx_0))``, so the prompt starts exactly at the anchor and the
    context vectors only learn a correction (as TaskRes does in embedding space; here through the text tower).
    """

    def __init__(self, backbone, class_names: list[str], n_ctx: int = 4, per_class: bool = False,
                 init: str | None = "a photo of a") -> None:
        super().__init__()
        if n_ctx < 1:
            raise InputError(f"n_ctx must be >= 1, got {n_ctx}")
        if not class_names:
            raise InputError("PromptLearner needs at least one class name")
        parts = backbone.text_parts()
        backbone.check_texts(list(class_names))
        self.model_id = backbone.model_id
        self.class_names = list(class_names)
        self.n_ctx, self.per_class = n_ctx, per_class
        self._encode = parts.encode_embeddings
        placeholder = " ".join(["X"] * n_ctx)
        ids = parts.tokenize([f"{placeholder} {c}." for c in class_names])  # N x L
        with torch.no_grad():
            emb = parts.token_embedding(ids).float()  # N x L x W
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("prefix", emb[:, :1].clone(), persistent=False)  # start token
        self.register_buffer("suffix", emb[:, 1 + n_ctx:].clone(), persistent=False)  # name, '.', end, pad
        width = emb.shape[-1]
        ctx = torch.randn(n_ctx, width) * 0.02
        if init:
            init_ids = parts.tokenize([init])
            with torch.no_grad():
                init_emb = parts.token_embedding(init_ids).float()[0, 1:1 + n_ctx]
            n_words = int((init_ids[0] > 0).sum()) - 2  # tokens between start and end
            k = min(n_ctx, max(0, n_words))
            if k:
                ctx[n_ctx - k:] = init_emb[:k]
        if per_class:
            ctx = ctx.unsqueeze(0).repeat(len(class_names), 1, 1)
        self.ctx = nn.Parameter(ctx)
        self.anchor: Tensor | None = None  # N x D, set by set_residual
        self.base: Tensor | None = None  # N x D: f(ctx) when the residual was set
        self._frozen: tuple[tuple, Tensor] | None = None  # (ctx version, anchor) -> embeddings, for use()

    def _raw(self) -> Tensor:
        n = len(self.class_names)
        ctx = self.ctx if self.per_class else self.ctx.unsqueeze(0).expand(n, -1, -1)
        x = torch.cat([self.prefix, ctx.to(self.prefix.dtype), self.suffix], dim=1)
        return F.normalize(self._encode(x, self.ids).float(), dim=-1)

    def forward(self) -> Tensor:
        """N x D normalised class embeddings with the current context (a residual over the anchor if set)."""
        e = self._raw()
        if self.anchor is None:
            return e
        return F.normalize(self.anchor.to(e) + e - self.base.to(e), dim=-1)

    @torch.no_grad()
    def embeddings(self) -> Tensor:
        """``forward()`` without gradients, computed once per context state: segmenting many images with a
        prompt file runs the text tower once, and an optimiser step (which bumps ``ctx``'s version) invalidates it."""
        key = (self.ctx._version, id(self.anchor))
        if self._frozen is None or self._frozen[0] != key:
            self._frozen = (key, self.forward().detach())
        return self._frozen[1]

    def set_residual(self, anchor: Tensor, base: Tensor | None = None) -> None:
        """Make the output ``normalize(anchor + f(ctx) - base)``; ``base`` defaults to f(current ctx)."""
        anchor = anchor.detach().float()
        anchor = anchor.unsqueeze(0) if anchor.ndim == 1 else anchor
        if base is None:
            with torch.no_grad():
                base = self._raw()
        base = base.detach().float()
        if anchor.ndim != 2 or anchor.shape != base.shape:
            raise InputError(f"residual anchor needs shape {tuple(base.shape)} (classes x embedding dim), "
                             f"got {tuple(anchor.shape)}")
        self.anchor, self.base = anchor.to(self.ctx.device), base.to(self.ctx.device)

    def metadata(self) -> dict:
        return {"format": PROMPT_FILE_FORMAT, "model_id": self.model_id, "class_names": self.class_names,
                "n_ctx": self.n_ctx, "per_class": self.per_class, "residual": self.anchor is not None}

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write the context (and residual anchor) as safetensors with JSON metadata in its header; atomic."""
        path = Path(path)
        meta = {**self.metadata(), **(extra or {})}
        tensors = {"ctx": self.ctx.detach().float().cpu()}
        if self.anchor is not None:
            tensors |= {"anchor": self.anchor.float().cpu(), "base": self.base.float().cpu()}
        atomic_save_safetensors(tensors, path, metadata={"vlfss": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path, backbone) -> PromptLearner:
        """Load a prompt file for ``backbone``; refuses a file learned on another model."""
        meta, tensors = read_prompt_tensors(path)
        ctx = tensors["ctx"]
        if meta["model_id"] != backbone.model_id:
            raise InputError(f"prompt file {path} was learned for model {meta['model_id']!r}, not "
                             f"{backbone.model_id!r}; re-run tune-prompts with this model")
        pl = cls(backbone, meta["class_names"], n_ctx=int(meta["n_ctx"]), per_class=bool(meta["per_class"]), init=None)
        if tuple(ctx.shape) != tuple(pl.ctx.shape):
            raise InputError(f"prompt file {path}: context shape {tuple(ctx.shape)} does not match its metadata")
        with torch.no_grad():
            pl.ctx.copy_(ctx)
        if meta.get("residual"):
            if "anchor" not in tensors or "base" not in tensors:
                raise InputError(f"prompt file {path} says it is a residual prompt but lacks its anchor; "
                                 "re-run tune-prompts")
            try:
                pl.set_residual(tensors["anchor"], tensors["base"])
            except InputError as e:
                raise InputError(f"prompt file {path}: {e}") from None
        return pl


def read_prompt_tensors(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(metadata, tensors) of a learned prompt file, with clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompt file {path} does not exist; create one with `vlfss tune-prompts`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("vlfss", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise InputError(f"prompt file {path} is not a vlfss prompt file ({type(e).__name__}); "
                         "create one with `vlfss tune-prompts`") from None
    if meta.get("format") != PROMPT_FILE_FORMAT or "ctx" not in tensors:
        raise InputError(f"prompt file {path} has no vlfss metadata; create one with `vlfss tune-prompts`")
    return meta, tensors


def read_prompt_file(path: str | Path) -> tuple[dict, Tensor]:
    """(metadata, ctx tensor) of a learned prompt file, with clear errors for anything else."""
    meta, tensors = read_prompt_tensors(path)
    return meta, tensors["ctx"]
