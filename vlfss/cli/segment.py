"""`vlfss segment`: segment image files, write label / overlay / confidence PNGs and a JSON summary per image."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError
from .common import add_class_args, add_segmenter_args, build_segmenter, class_request

OUTPUT_SUFFIXES = ("_labels.png", "_overlay.png", "_confidence.png", ".json")


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("segment", help="segment images with text, examples, or both")
    s.add_argument("images", nargs="+", help="query image files")
    add_class_args(s)
    s.add_argument("--adapt-steps", type=int, default=0, help="test-time adaptation steps on the supports")
    s.add_argument("--out", default="vlfss_out", help="output folder")
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")
    s.add_argument("--quiet", action="store_true")
    add_segmenter_args(s)
    s.set_defaults(func=run)


def _targets(images: list[Path], out_dir: Path, overwrite: bool) -> dict[Path, list[Path]]:
    """Output files per image; refuses collisions and existing files (unless ``overwrite``) before any work."""
    if len({p.stem for p in images}) != len(images):
        raise InputError("two input images share a file name; their outputs would collide; rename one")
    targets = {}
    for p in images:
        names = [out_dir / f"{p.stem}{s}" for s in OUTPUT_SUFFIXES]
        existing = [n for n in names if n.exists()]
        if existing and not overwrite:
            raise InputError(f"{existing[0]} already exists; pass --overwrite or choose another --out")
        targets[p] = names
    return targets


def run(args: argparse.Namespace) -> int:
    from PIL import Image
    from tqdm import tqdm

    from ..data.image import load_image
    from ..io_utils import atomic_save_image, atomic_write_text, check_writable_dir
    from ..viz import heatmap, label_png, overlay

    out_dir = check_writable_dir(Path(args.out))
    images = [Path(p) for p in args.images]
    for p in images:  # fail before loading any model
        load_image(p)
    targets = _targets(images, out_dir, args.overwrite)
    seg = build_segmenter(args)
    request = class_request(args, seg)
    for p in tqdm(images, disable=len(images) < 3 or args.quiet, desc="segment", unit="img"):
        img = load_image(p)  # decoded once, for the segmenter and the overlay
        out = seg.segment(img, **request, adapt_steps=args.adapt_steps)
        labels = out.labels.numpy()
        lab, ov, conf, js = targets[p]
        atomic_save_image(label_png(labels), lab)
        atomic_save_image(Image.fromarray(overlay(img, labels)), ov)
        atomic_save_image(Image.fromarray(heatmap(out.confidence.numpy())), conf)
        summary = {"image": str(p), "model": seg.backbone.model_id, "mode": seg.mode if args.mode == "auto"
                   else args.mode, **out.summary()}
        atomic_write_text(js, json.dumps(summary, indent=2))
        if not args.quiet:
            found = ", ".join(f"{c['name']} {100 * c['area_frac']:.1f}%" for c in summary["classes"])
            how = f" ({summary['windows']} windows)" if summary.get("windows", 0) > 1 else ""
            print(f"{p.name}{how}: {found} -> {lab.name}, {ov.name}, {conf.name}, {js.name}")
    return 0
