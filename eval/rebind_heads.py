"""Rebind learned heads to another id of the same encoder weights, in place (or to --out).

A head records the backbone id it was trained on, and ``load_head`` refuses any other. The heads of
``vlfss-tiny-robust`` were meta-trained (eval/train_heads.py, the shipped recipe) with the distilled weights
installed as one full file, ``vlfss-tiny@vlfss-tiny-vit.safetensors:15741812``; the package ships the same numbers
as the embedded text tower plus a separate image-tower file, which the backbone names
``vlfss-tiny-robust@vlfss-tiny-vit.safetensors:15741780+vlfss-tiny-robust-visual.safetensors:1459368`` (both
gave bit-identical dense features and text embeddings when the heads were rebound). This script moves a head to
the new id and records where it came from (``rebound_from``); tensors are unchanged. It refuses a head that was
trained on another id.

    python eval/rebind_heads.py --from OLD_ID --to NEW_ID --out vlfss/assets runs/robust_heads/*.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from safetensors import safe_open  # noqa: E402

from vlfss.io_utils import atomic_save_safetensors  # noqa: E402
from vlfss.modeling.head_file import read_head_file  # noqa: E402


def rebind(path: Path, old: str, new: str, out: Path | None) -> Path:
    """Write ``path`` with its backbone id ``old`` replaced by ``new`` (ValueError if it was trained on another)."""
    meta, state = read_head_file(path)
    if meta["backbone"] != old:
        raise ValueError(f"{path} was trained on {meta['backbone']!r}, not {old!r}; not rebound")
    with safe_open(str(path), framework="pt") as f:
        other = {k: v for k, v in (f.metadata() or {}).items() if k != "vlfss"}
    meta = {**meta, "backbone": new, "rebound_from": old, "rebound_by": "eval/rebind_heads.py"}
    dest = out / path.name if out else path
    atomic_save_safetensors(state, dest, metadata={**other, "vlfss": json.dumps(meta)})
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("heads", nargs="+", type=Path)
    ap.add_argument("--from", dest="old", required=True, help="the backbone id the heads record now")
    ap.add_argument("--to", dest="new", required=True, help="the new id of the same weights (backbone.model_id)")
    ap.add_argument("--out", type=Path, default=None, help="write here instead of in place")
    args = ap.parse_args(argv)
    try:
        for p in args.heads:
            print(rebind(p, args.old, args.new, args.out))
    except ValueError as e:
        print(f"rebind_heads: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
