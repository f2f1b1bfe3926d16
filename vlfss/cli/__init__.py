"""`vlfss` command line: parse arguments, load configs, call the Python API. Errors exit 2 with one line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from ..errors import InputError, VlfssError

log = logging.getLogger(__name__)


class _ClassAction(argparse.Action):
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


def check_writable_dir(path: Path, what: str = "output folder") -> Path:
    """Create ``path`` if needed and prove it is writable, before any work is done."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".vlfss-write-test"):
            pass
    except OSError as e:
        raise InputError(f"{what} {path} is not writable ({e.strerror}); choose another with --out") from None
    return path


def _segmenter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vlfss-tiny", help="backbone name (see `vlfss models`)")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or local weights file")
    p.add_argument("--mode", default="auto", choices=["auto", "training-free", "learned"])
    p.add_argument("--head", default=None, help="learned head weights (safetensors)")
    p.add_argument("--variant", default=None, help="dense last-block variant: plain maskclip sclip clearclip naclip")
    p.add_argument("--templates", default=None, help="template set name or file (default: the model's own)")
    p.add_argument("--input-size", type=int, default=None, help="encoder long side in pixels")
    p.add_argument("--cache-dir", default=None, help="download cache for hub weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other SegmenterConfig overrides")


def _build_segmenter(args):
    from ..config import load_config
    from ..segmenter import Segmenter, SegmenterConfig

    overrides = [f"model={args.model}", f"mode={args.mode}", f"device={args.device}"]
    for key, val in (("templates", args.templates), ("pretrained", args.pretrained), ("head_path", args.head),
                     ("variant", args.variant), ("input_size", args.input_size), ("cache_dir", args.cache_dir)):
        if val is not None:
            overrides.append(f"{key}={val}")
    cfg = load_config(SegmenterConfig, None, overrides + list(args.set))
    return Segmenter.from_config(cfg)


# ------------------------------------------------------------------------------------------ segment
def cmd_segment(args) -> int:
    from ..data.image import load_image
    from ..io_utils import atomic_save_image, atomic_write_text
    from ..viz import heatmap, label_png, overlay

    out_dir = check_writable_dir(Path(args.out))
    images = [Path(p) for p in args.images]
    for p in images:  # fail before loading any model
        load_image(p)
    targets = {}
    for p in images:
        stem = p.stem
        names = [out_dir / f"{stem}{s}" for s in ("_labels.png", "_overlay.png", "_confidence.png", ".json")]
        existing = [n for n in names if n.exists()]
        if existing and not args.overwrite:
            raise InputError(f"{existing[0]} already exists; pass --overwrite or choose another --out")
        targets[p] = names
    if len({p.stem for p in images}) != len(images):
        raise InputError("two input images share a file name; their outputs would collide; rename one")
    seg = _build_segmenter(args)
    classes = getattr(args, "classes", None) or []
    if args.prompt:
        names = seg.use_prompt_file(args.prompt)
        if not classes:
            classes = [{"text": n, "supports": []} for n in names]
    texts = [c["text"] for c in classes]
    supports = [c["supports"] for c in classes]
    negatives = [tuple(n) for n in (args.negative or [])] + list(args.negative_text or [])
    from PIL import Image
    from tqdm import tqdm

    for p in tqdm(images, disable=len(images) < 3 or args.quiet, desc="segment", unit="img"):
        out = seg.segment(str(p), texts=texts if any(texts) else None,
                          supports=supports if any(supports) else None, negatives=negatives or None,
                          adapt_steps=args.adapt_steps)
        img = load_image(p)
        labels = out.labels.numpy()
        lab, ov, conf, js = targets[p]
        atomic_save_image(label_png(labels), lab)
        atomic_save_image(Image.fromarray(overlay(img, labels)), ov)
        atomic_save_image(Image.fromarray(heatmap(out.confidence.numpy())), conf)
        summary = {"image": str(p), "model": seg.backbone.model_id, "mode": args.mode if args.mode != "auto"
                   else seg.mode, **out.summary()}
        atomic_write_text(js, json.dumps(summary, indent=2))
        if not args.quiet:
            found = ", ".join(f"{c['name']} {100 * c['area_frac']:.1f}%" for c in summary["classes"])
            print(f"{p.name}: {found} -> {lab.name}, {ov.name}, {conf.name}, {js.name}")
    return 0


def cmd_models(args) -> int:
    from ..modeling.backbones import describe_models

    for name, desc in describe_models():
        if args.all or not desc.startswith("open_clip; pretrained tags: none"):
            print(f"{name:32s} {desc}")
    return 0


def cmd_demo(args) -> int:
    from ..demo import run_demo

    out = check_writable_dir(Path(args.out))
    run_demo(out, seed=args.seed, model=args.model, pretrained=args.pretrained)
    return 0


def cmd_pretrain(args) -> int:
    from ..config import load_config
    from ..engine.pretrain import PretrainConfig, pretrain

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    if args.export:
        from ..engine.pretrain import export_weights

        ckpt = Path(cfg.out_dir) / "last.pt"
        if not ckpt.is_file():
            raise InputError(f"no checkpoint {ckpt} to export; train first")
        print(export_weights(ckpt, Path(args.export), cfg))
        return 0
    check_writable_dir(Path(cfg.out_dir), "out_dir")
    print(pretrain(cfg, resume=not args.restart))
    return 0


def cmd_bench(args) -> int:
    from ..evaluation.bench import run_bench

    run_bench(size=args.size, repeats=args.repeats, model=args.model, out=args.out)
    return 0


def _lazy(module: str, func: str):
    def run(args) -> int:
        import importlib

        return importlib.import_module(f"vlfss.{module}").__dict__[func](args)

    return run


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vlfss", description="Vision-language prompt-driven few-shot segmentation")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = ap.add_subparsers(dest="command", required=True)

    s = sub.add_parser("segment", help="segment images with text, examples, or both")
    s.add_argument("images", nargs="+", help="query image files")
    s.add_argument("--text", action=_ClassAction, help="a class to find (repeat for N-way); opens a class")
    s.add_argument("--support", nargs=2, metavar=("IMAGE", "MASK"), action=_ClassAction,
                   help="an example for the last --text class (or a new example-only class)")
    s.add_argument("--negative", nargs=2, metavar=("IMAGE", "MASK"), action="append",
                   help="an example of what NOT to segment")
    s.add_argument("--negative-text", action="append", help="a name of what NOT to segment")
    s.add_argument("--prompt", default=None, help="learned prompt file from `vlfss tune-prompts`")
    s.add_argument("--adapt-steps", type=int, default=0, help="test-time adaptation steps on the supports")
    s.add_argument("--out", default="vlfss_out", help="output folder")
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")
    s.add_argument("--quiet", action="store_true")
    _segmenter_args(s)
    s.set_defaults(func=cmd_segment)

    m = sub.add_parser("models", help="list known backbones")
    m.add_argument("--all", action="store_true", help="include open_clip architectures without pretrained tags")
    m.set_defaults(func=cmd_models)

    d = sub.add_parser("demo", help="offline demo on a generated scene with the embedded tiny model")
    d.add_argument("--out", default="vlfss_demo")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--model", default="vlfss-tiny")
    d.add_argument("--pretrained", default=None)
    d.set_defaults(func=cmd_demo)

    p = sub.add_parser("pretrain-clip", help="train the tiny CLIP on the synthetic world (captions only)")
    p.add_argument("--config", default=None)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in out_dir")
    p.add_argument("--export", default=None, metavar="FILE", help="only write out_dir's last checkpoint as fp16 "
                   "safetensors to FILE (e.g. vlfss/assets/vlfss-tiny-vit.safetensors)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_pretrain)

    b = sub.add_parser("bench", help="speed benchmark vs the bare encoder and CLIPSeg (random weights)")
    b.add_argument("--size", type=int, default=352)
    b.add_argument("--repeats", type=int, default=7)
    b.add_argument("--model", default="ViT-B-16")
    b.add_argument("--out", default=None, help="write the figures as JSON here")
    b.set_defaults(func=cmd_bench)

    for name, module, func, helptext in (
        ("eval", "evaluation.harness", "cli_eval", "score zero-shot vs few-shot on a benchmark"),
        ("train", "engine.train", "cli_train", "episodic meta-training of the fusion head"),
        ("tune-prompts", "engine.prompt_tuning", "cli_tune_prompts", "learn context vectors for a new class"),
    ):
        sp = sub.add_parser(name, help=helptext, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
        sp.set_defaults(func=_lazy(module, func), lazy=True)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "lazy", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        logging.getLogger("root").setLevel(logging.ERROR)  # open_clip logs through the root logger
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if getattr(args, "lazy", False):
            # the raw arguments after the command word: argparse's REMAINDER drops a leading --option
            return int(args.func(argv[argv.index(args.command) + 1:]) or 0)
        return int(args.func(args) or 0)
    except VlfssError as e:
        print(f"vlfss: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlfss: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
