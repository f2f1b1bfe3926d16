"""The embedded default backbone: a tiny CLIP ViT (96 px, patch 6) trained on the synthetic texture world.

It runs offline on a fresh machine (its weights ship in vlfss/assets), but it knows only that world's 20
texture classes. Asked for anything else ("a cat") it still returns a confident mask, so it warns: a class
text is outside its world when none of its words is one the tiny CLIP was trained on (a class name, its
singular, its caption adjective such as "striped", or "background", which the segmenter's own background
prompts use). The check runs once per distinct text per backbone, never per image.

The warning is a Python warning (``OutOfVocabularyWarning``), not a log record: the CLI keeps library log
records at ERROR unless ``--verbose``, while Python warnings reach the terminal once per message.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

from ...data.synthetic import CLASS_NAMES, class_words
from ...errors import ModelError
from ..config import ModelDefaults
from ..quality_gate import QualityGate, load_gate
from ..restore import Restorer, load_restorer
from .base import ASSETS, FrozenBackbone
from .open_clip_backbone import OpenCLIPBackbone
from .registry import register_backbone
from .weights import RANDOM, weights_id

TINY_MODEL = "vlfss-tiny-vit"  # the open_clip config name (vlfss/assets/vlfss-tiny-vit.json)
TINY_WEIGHTS = ASSETS / f"{TINY_MODEL}.safetensors"
# vlfss-tiny-robust: the embedded weights with this image tower (vlfss robust-clip; docs/tiny-clip.md)
ROBUST_VISUAL = ASSETS / "vlfss-tiny-robust-visual.safetensors"
# its quality gate: which images the robust tower encodes instead (eval/train_quality_gate.py; docs/tiny-clip.md)
GATE = ASSETS / "vlfss-tiny-gate.safetensors"
RESTORER = ASSETS / "vlfss-tiny-restorer.safetensors"
WEIGHTS_ENV = "VLFSS_TINY_WEIGHTS"  # overrides the embedded weights file (tests, re-trained copies)
REAL_CLIP_HINT = "--model ViT-B-16 --pretrained openai (Python: build_segmenter('ViT-B-16', pretrained='openai'))"

# The tiny CLIP was trained with a token-wise loss, so its last-layer tokens are text-aligned as they are (plain);
# its captions used the "synthetic" phrasings; its second block's tokens (tap 0 of taps 1, 3, 4) match textures
# across instances far better than the caption-trained last layer: 1-shot prototypes 38.5 vs 29.6 mIoU
# (docs/results.md, "Training-free prototypes").
# Its masks are refined with PAMR keeping each class's area: +3.6 to +7.8 mIoU in every cell of the README table
# (docs/inference.md, "Mask refinement"); the robust variant's tables were measured unrefined, so it keeps none.
TINY_DEFAULTS = ModelDefaults(variant="plain", templates="synthetic", proto_features="tap0", refine="pamr-area",
                              slide_short_windows=None)  # its world is drawn at native pixels: slide keeps them
ROBUST_DEFAULTS = dataclasses.replace(TINY_DEFAULTS, refine="none")


class OutOfVocabularyWarning(UserWarning):
    """A class text names nothing the model was trained to recognise (the tiny CLIP's closed world)."""


def _singular(name: str) -> str:
    if name.endswith(("sses", "shes", "ches", "xes")):  # crosses -> cross, dashes -> dash
        return name[:-2]
    return name[:-1] if name.endswith("s") else name  # stripes -> stripe, dots -> dot


def _world_words() -> frozenset[str]:
    words = {"background"}
    for name in CLASS_NAMES:
        for word in (*class_words(name), _singular(name)):
            words.update(re.findall(r"[a-z]+", word.lower()))
    return frozenset(words)


WORLD_WORDS = _world_words()


def in_world(text: str) -> bool:
    """Whether ``text`` names something the tiny CLIP knows: at least one of its words is a world word."""
    return any(w in WORLD_WORDS for w in re.findall(r"[a-z]+", text.lower()))


class TinyCLIPBackbone(OpenCLIPBackbone):
    """The tiny CLIP: an open_clip ViT that warns when asked for text outside the synthetic world."""

    def __init__(self, weights: str, cache_dir: str | None = None, taps: tuple[int, ...] | None = None,
                 device: str = "cpu", visual: str | None = None, name: str = "vlfss-tiny") -> None:
        super().__init__(TINY_MODEL, weights, cache_dir=cache_dir, taps=taps, device=device)
        self.model_id = f"{name}@{weights_id(weights)}"
        self.weights_file, self.visual_file = weights, visual
        if visual is not None:  # another image tower over the same text tower (the robust distillation's)
            load_visual(self.model.visual, visual)
            self.model_id += f"+{weights_id(visual)}"
        self._checked: set[str] = set()
        self._fallback: tuple[FrozenBackbone, QualityGate, Restorer | None] | None = None  # robust_fallback's answer
        self._fallback_built = False

    def gate_id(self) -> str:
        """What a quality gate is fitted to: these weights and these taps."""
        return f"{self.model_id}|taps={','.join(map(str, self.taps))}"

    def fallback_head_path(self, head_path: str | Path) -> str | None:
        """The robust tower's head paired with a head file by the shipped naming (``head-vlfss-tiny[-foldN]`` ->
        ``head-vlfss-tiny-robust[-foldN]`` beside it), if that file exists; else None."""
        p = Path(head_path)
        if not p.name.startswith("head-vlfss-tiny") or p.name.startswith("head-vlfss-tiny-robust"):
            return None
        pair = p.with_name(p.name.replace("head-vlfss-tiny", "head-vlfss-tiny-robust", 1))
        return str(pair) if pair.is_file() else None

    def robust_fallback(self) -> tuple[FrozenBackbone, QualityGate, Restorer | None] | None:
        """The robust image tower, the gate and the restorer fitted to this model's taps, for the embedded weights
        with their shipped gate; None for any other weights or taps (the gate would read features it was not fitted
        to). The restorer is None when its file is absent."""
        if not self._fallback_built:  # built once per backbone and shared, like the backbone itself
            self._fallback_built = True
            if self.visual_file is None and GATE.is_file() and ROBUST_VISUAL.is_file():
                gate = load_gate(GATE)
                if gate.backbone == self.gate_id():
                    robust = TinyCLIPBackbone(self.weights_file, taps=self.taps, device=str(self.device),
                                              visual=str(ROBUST_VISUAL), name="vlfss-tiny-robust")
                    restorer = load_restorer(RESTORER) if RESTORER.is_file() else None
                    if restorer is not None and restorer.backbone != gate.backbone:
                        restorer = None
                    self._fallback = (robust, gate, restorer)
        return self._fallback

    def check_texts(self, texts: list[str]) -> None:
        """Warn, once per distinct text, about class texts outside the synthetic world."""
        new = [t for t in dict.fromkeys(texts) if t not in self._checked]
        self._checked.update(new)
        outside = [t for t in new if not in_world(t)]
        if outside:
            shown = ", ".join(repr(t) for t in outside[:3]) + (", ..." if len(outside) > 3 else "")
            warnings.warn(
                f"the embedded tiny CLIP knows only the synthetic world's {len(CLASS_NAMES)} texture classes "
                f"({', '.join(CLASS_NAMES)}); {shown} names none of them, so its mask means nothing. "
                f"For real images use a real CLIP: {REAL_CLIP_HINT}", OutOfVocabularyWarning, stacklevel=3)


def tiny_weights(pretrained: str | None) -> str:
    """The weights file to load (or ``random``): the user's file, else $VLFSS_TINY_WEIGHTS, else the embedded one.

    Each error names the path that is missing and where it came from.
    """
    if pretrained == RANDOM:
        return RANDOM
    if pretrained:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ModelError(f"weights file {pretrained} (--pretrained for vlfss-tiny) does not exist; pass an "
                             f"existing {TINY_MODEL} .safetensors checkpoint, or drop --pretrained to use the "
                             "embedded weights")
        return str(path)
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        if not Path(env).expanduser().is_file():
            raise ModelError(f"{WEIGHTS_ENV}={env} does not exist; point it at a {TINY_MODEL} checkpoint or unset it")
        return str(Path(env).expanduser())
    if not TINY_WEIGHTS.is_file():
        raise ModelError(f"the embedded tiny CLIP weights {TINY_WEIGHTS} are missing from this installation; "
                         "reinstall vlfss, or pass a checkpoint with --pretrained FILE")
    return str(TINY_WEIGHTS)


def load_visual(visual: torch.nn.Module, path: str | Path) -> None:
    """Load an image tower's weights (keys without the ``visual.`` prefix, or with it) in place, strictly."""
    try:
        state = {k.removeprefix("visual."): v.float() for k, v in load_file(str(path)).items()}
        visual.load_state_dict(state)
    except Exception as e:  # a missing file, not safetensors, or another architecture
        first = (str(e).strip().splitlines() or [""])[-1][:160]
        raise ModelError(f"image tower weights {path} do not load into {TINY_MODEL}'s image tower "
                         f"({type(e).__name__}: {first}); reinstall vlfss or re-export them") from None


def tiny_defaults(backbone: TinyCLIPBackbone, defaults: ModelDefaults) -> ModelDefaults:
    """TINY_DEFAULTS, except that custom taps move tap 0 off block 1: prototypes then use z instead."""
    if backbone.taps and backbone.taps[0] == 1:
        return defaults
    return dataclasses.replace(defaults, proto_features="z")


@register_backbone("vlfss-tiny", "tiny CLIP ViT (96 px, patch 6) trained on the synthetic world; embedded, offline; "
                   "knows only its 20 texture classes", TINY_DEFAULTS, tiny_defaults)
def build_tiny(pretrained: str | None = None, cache_dir: str | None = None, device: str = "cpu",
               taps: tuple[int, ...] | None = None) -> TinyCLIPBackbone:
    """The tiny CLIP with the weights ``tiny_weights`` picks."""
    return TinyCLIPBackbone(tiny_weights(pretrained), cache_dir=cache_dir, taps=taps, device=device)


@register_backbone("vlfss-tiny-robust", "vlfss-tiny with an image tower distilled to resist blur, JPEG and "
                   "rescaling (vlfss robust-clip); embedded, offline; its own heads", ROBUST_DEFAULTS, tiny_defaults)
def build_tiny_robust(pretrained: str | None = None, cache_dir: str | None = None, device: str = "cpu",
                      taps: tuple[int, ...] | None = None) -> TinyCLIPBackbone:
    """The tiny CLIP's text tower (``tiny_weights`` picks the file) with the robust image tower shipped beside it."""
    if not ROBUST_VISUAL.is_file():
        raise ModelError(f"the robust image tower {ROBUST_VISUAL} is missing from this installation; reinstall vlfss")
    return TinyCLIPBackbone(tiny_weights(pretrained), cache_dir=cache_dir, taps=taps, device=device,
                            visual=str(ROBUST_VISUAL), name="vlfss-tiny-robust")
