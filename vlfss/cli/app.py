"""`vlfss app`: the web app (Gradio; `pip install "vlfss[app]"`). Serves on 127.0.0.1 unless --host says
otherwise; a public share link only with --share."""

from __future__ import annotations

import argparse

from ..errors import InputError
from .common import add_segmenter_args


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("app", help="the web app: paint a support mask, type a class, see the segmentation")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    s.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    s.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted, MiB (default 10)")
    s.add_argument("--max-image-mp", type=float, default=16.0, help="largest image, megapixels (default 16)")
    s.add_argument("--concurrency", type=int, default=2, help="requests segmented at once (default 2)")
    s.add_argument("--extra-model", action="append", default=[], metavar="NAME",
                   help="another model to offer in the page (its own defaults; repeatable)")
    add_segmenter_args(s)
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401 - the optional extra; checked before any work
    except ImportError:
        raise InputError('the app needs Gradio: pip install "vlfss[app]"') from None
    import dataclasses

    from ..app.inputs import Limits
    from ..app.ui import create_app, launch
    from .common import segmenter_config

    if args.max_upload_mb <= 0 or args.max_image_mp <= 0 or args.concurrency < 1:
        raise InputError("--max-upload-mb and --max-image-mp must be > 0 and --concurrency >= 1")
    cfg = segmenter_config(args)
    configs = {cfg.model: cfg}
    for name in args.extra_model:
        configs.setdefault(name, dataclasses.replace(cfg, model=name, pretrained=None, head_path=None))
    limits = Limits(max_upload_mb=args.max_upload_mb, max_image_mp=args.max_image_mp)
    demo, handlers = create_app(configs, limits)
    print(f"vlfss app: http://{args.host}:{args.port} (Ctrl+C to stop)")
    launch(demo, args.host, args.port, args.share, args.max_upload_mb, args.concurrency,
           allowed_paths=[str(handlers.workdir)], quiet=True)
    return 0
