"""Options shared by the subcommands: the segmenter's (defaults read from ``SegmenterConfig``) and the classes'."""

from __future__ import annotations

import argparse
import dataclasses

from ..modeling.config import INFERENCES, SegmenterConfig

_DEFAULTS = SegmenterConfig()


class ClassAction(argparse.Action):
    """Keeps --text / --support in command-line order: each --text opens a class, --support joins the last one."""

    def __call__(self, parser, ns, values, option_string=None):
        classes = getattr(ns, "classes", None) or []
        if option_string == "--text":
            classes.append({"text": values, "supports": []})
        else:
            if not classes:
                classes.append({"text": None, "supports": []})
            classes[-1]["supports"].append(tuple(values))
        ns.classes = classes


def add_class_args(p: argparse.ArgumentParser) -> None:
    """--text / --support / --negative / --negative-text / --prompt: what to segment."""
    p.add_argument("--text", action=ClassAction, help="a class to find (repeat for N-way); opens a class")
    p.add_argument("--support", nargs=2, metavar=("IMAGE", "MASK"), action=ClassAction,
                   help="an example for the last --text class (or a new example-only class)")
    p.add_argument("--negative", nargs=2, metavar=("IMAGE", "MASK"), action="append",
                   help="an example of what NOT to segment")
    p.add_argument("--negative-text", action="append", help="a name of what NOT to segment")
    p.add_argument("--prompt", default=None, help="learned prompt file from `vlfss tune-prompts`")


def add_segmenter_args(p: argparse.ArgumentParser) -> None:
    """--model, --pretrained, --mode, ...: the SegmenterConfig fields a user sets most; --set for the rest."""
    d = _DEFAULTS
    p.add_argument("--model", default=d.model, help=f"backbone name (see `vlfss models`; default {d.model})")
    p.add_argument("--pretrained", default=d.pretrained,
                   help="open_clip pretrained tag, local weights file, or 'random' for random weights (the only way to "
                   "get them; default: the model's own)")
    p.add_argument("--mode", default=d.mode, choices=["auto", "training-free", "learned"],
                   help=f"default {d.mode}: learned when the model ships a head, else training-free")
    p.add_argument("--head", default=d.head_path, help="learned head weights (safetensors)")
    p.add_argument("--variant", default=d.variant,
                   help="dense last-block variant: plain maskclip sclip clearclip naclip (default: the model's own)")
    p.add_argument("--templates", default=d.templates, help="template set name or file (default: the model's own)")
    p.add_argument("--input-size", type=int, default=d.input_size,
                   help="encoder long side in pixels (default: the model's native size)")
    p.add_argument("--inference", default=d.inference, choices=list(INFERENCES),
                   help=f"how images are encoded: resize to the encoder's input, slide windows over it, multiscale, "
                   f"or auto (slide when the long side is >= {d.auto_slide_factor:g} windows; default {d.inference})")
    p.add_argument("--cache-dir", default=d.cache_dir, help="download cache for hub weights")
    p.add_argument("--device", default=d.device, help=f"torch device (default {d.device})")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other SegmenterConfig overrides")


def segmenter_config(args: argparse.Namespace) -> SegmenterConfig:
    """The SegmenterConfig the options describe: named flags first, then --set overrides."""
    from ..config import load_config

    flags = {"model": args.model, "pretrained": args.pretrained, "mode": args.mode, "head_path": args.head,
             "variant": args.variant, "templates": args.templates, "input_size": args.input_size,
             "inference": args.inference,
             "cache_dir": args.cache_dir, "device": args.device}
    defaults = {f.name: getattr(_DEFAULTS, f.name) for f in dataclasses.fields(SegmenterConfig)}
    overrides = [f"{k}={v}" for k, v in flags.items() if v != defaults[k] and v is not None]
    return load_config(SegmenterConfig, None, overrides + list(args.set or []))


def build_segmenter(args: argparse.Namespace):
    """The Segmenter the options describe."""
    from ..segmenter import Segmenter

    return Segmenter.from_config(segmenter_config(args))


def class_request(args: argparse.Namespace, seg) -> dict:
    """texts / supports / negatives for ``Segmenter.segment`` from the class options (a prompt file registers its
    learned classes, and gives the classes when no --text / --support does)."""
    classes = getattr(args, "classes", None) or []
    if args.prompt:
        names = seg.use_prompt_file(args.prompt)
        if not classes:
            classes = [{"text": n, "supports": []} for n in names]
    texts = [c["text"] for c in classes]
    supports = [c["supports"] for c in classes]
    negatives = [tuple(n) for n in (args.negative or [])] + list(args.negative_text or [])
    return {"texts": texts if any(texts) else None, "supports": supports if any(supports) else None,
            "negatives": negatives or None}


def add_weights_run_args(p: argparse.ArgumentParser, config_class: str, export_help: str) -> None:
    """The arguments of a command that trains model weights from a YAML config (pretrain-clip, robust-clip)."""
    p.add_argument("--config", default=None, help=f"YAML config (keys of vlfss.engine.config.{config_class})")
    p.add_argument("--restart", action="store_true", help="delete the checkpoints in out_dir and start over")
    p.add_argument("--export", default=None, metavar="FILE", help=export_help)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. steps=600")
