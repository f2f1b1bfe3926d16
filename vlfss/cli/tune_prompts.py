"""`vlfss tune-prompts`: learn context vectors for a new class (a thin layer over ``vlfss.engine.prompt_tuning``).

Defaults come from ``PromptTuneConfig`` and ``SegmenterConfig`` (torch-free), so `vlfss --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..engine.config import PromptTuneConfig
from ..errors import InputError
from ..modeling.config import SegmenterConfig
from .common import segmenter_config

_TUNE = PromptTuneConfig()
_SEG = SegmenterConfig()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune-prompts", help="learn context vectors for a new class",
                       description="Learn context vectors (CoOp) for a new class from labelled images.")
    p.add_argument("--class", dest="class_name", required=True, help="the class name the prompt is for")
    p.add_argument("--images", nargs="+", required=True, help="labelled images of the class")
    p.add_argument("--masks", nargs="+", required=True, help="their masks (0/1 or 0/255; 255 may mark ignore)")
    p.add_argument("--out", required=True, help="prompt file to write (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prompt file")
    _add_model_args(p)
    p.add_argument("--n-ctx", type=int, default=_TUNE.n_ctx, help=f"context vectors (default {_TUNE.n_ctx})")
    p.add_argument("--steps", type=int, default=_TUNE.steps, help=f"optimisation steps (default {_TUNE.steps})")
    p.add_argument("--lr", type=float, default=_TUNE.lr, help=f"Adam learning rate (default {_TUNE.lr})")
    p.add_argument("--init", default=_TUNE.init, help=f"words the context starts from ('' for random; default "
                   f"{_TUNE.init!r})")
    p.add_argument("--anchor-weight", type=float, default=_TUNE.anchor_weight,
                   help=f"pull towards the hand-written templates' embedding (0: plain CoOp; default "
                   f"{_TUNE.anchor_weight})")
    p.add_argument("--no-residual", dest="residual", action="store_false", default=_TUNE.residual,
                   help="learn the context from the --init words alone (plain CoOp) instead of a correction that "
                   "starts at the hand-written templates")
    p.add_argument("--seed", type=int, default=_TUNE.seed, help=f"seeds the random initialisation (default "
                   f"{_TUNE.seed})")
    p.set_defaults(func=run)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    """The segmenter options tuning needs (it always runs training-free: the prompt serves the text rule)."""
    p.add_argument("--model", default=_SEG.model, help=f"backbone name (see `vlfss models`; default {_SEG.model})")
    p.add_argument("--pretrained", default=_SEG.pretrained,
                   help="open_clip pretrained tag or local weights file (default: the model's own)")
    p.add_argument("--variant", default=_SEG.variant, help="dense last-block variant (default: the model's own)")
    p.add_argument("--templates", default=_SEG.templates,
                   help="template set the tuned prompt is compared with (default: the model's own)")
    p.add_argument("--input-size", type=int, default=_SEG.input_size,
                   help="encoder long side in pixels (default: the model's native size)")
    p.add_argument("--cache-dir", default=_SEG.cache_dir, help="download cache for hub weights")
    p.add_argument("--device", default=_SEG.device, help=f"torch device (default {_SEG.device})")
    p.set_defaults(mode="training-free", head=None, set=[], inference=_SEG.inference)


def _check_paths(args: argparse.Namespace) -> Path:
    """The output file, refused if it exists (unless --overwrite) or its folder is not writable; inputs exist."""
    from ..io_utils import check_writable_dir  # loads torch: only when the command runs

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} already exists; pass --overwrite or choose another --out")
    for p in [*args.images, *args.masks]:
        if not Path(p).is_file():
            raise InputError(f"{p} does not exist")
    check_writable_dir(out.parent, "output folder", "choose another --out")
    return out


def prompt_config(args: argparse.Namespace) -> PromptTuneConfig:
    """The PromptTuneConfig the options describe (``--init ''``: a random context)."""
    return PromptTuneConfig(n_ctx=args.n_ctx, steps=args.steps, lr=args.lr, init=args.init or None,
                            anchor_weight=args.anchor_weight, residual=args.residual, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    # the library loads here, when the command runs, so that `vlfss --help` stays fast
    from ..engine.prompt_tuning import learn_prompt, save_prompt
    from ..segmenter import Segmenter

    out = _check_paths(args)
    seg = Segmenter.from_config(segmenter_config(args))
    cfg = prompt_config(args)
    res = learn_prompt(seg, args.class_name, args.images, args.masks, cfg)
    save_prompt(res, out, seg, cfg, len(args.images))
    print(f"learned a {cfg.n_ctx}-vector prompt for {args.class_name!r} on {len(args.images)} image(s) in "
          f"{cfg.steps} steps: training IoU {100 * res.train_iou_templates:.1f} (templates) -> "
          f"{100 * res.train_iou_tuned:.1f} (tuned); wrote {out}")
    return 0
