"""Convert learned heads from format vlfss-head/1 to vlfss-head/2, in place (or to --out), tensors unchanged.

vlfss-head/1 recorded the prior's training-free settings as six copied fields of the head config
(``prior_proto_features``, ``prior_shot_pooling``, ``prior_cell_norm``, ``prior_metric``, ``prior_shrinkage``,
``prior_mahalanobis_scale``); vlfss-head/2 records them as one nested ``TrainingFreeConfig`` (``head.prior``),
whose other fields were the defaults the prior always used. Shot pooling ``max`` and ``cell_norm: false`` no
longer exist (docs/pruned.md): a head trained with them is refused, retrain it. Used once for the shipped heads
(vlfss/assets/head-*.safetensors); kept for heads trained before the change.

    python eval/upgrade_heads.py runs/synthetic/fold0/head.safetensors [more files ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from safetensors import safe_open  # noqa: E402

from vlfss.io_utils import atomic_save_safetensors  # noqa: E402
from vlfss.modeling.config import TrainingFreeConfig  # noqa: E402
from vlfss.modeling.head_file import HEAD_FORMAT  # noqa: E402

OLD_FORMAT = "vlfss-head/1"
# the v1 fields that moved into head.prior, and the value each must have now (None: any value carries over)
MOVED = {"prior_proto_features": ("proto_features", None), "prior_shot_pooling": (None, "mean"),
         "prior_cell_norm": (None, True), "prior_metric": ("metric", None), "prior_shrinkage": ("shrinkage", None),
         "prior_mahalanobis_scale": ("mahalanobis_scale", None)}
LATER = ("residual_prior", "prior_input", "agnostic_kinds")  # v1 fields every head trained with them records


def upgrade_meta(meta: dict, name: str) -> dict:
    """The vlfss-head/2 metadata of a vlfss-head/1 head (ValueError when it cannot be expressed)."""
    if meta.get("format") != OLD_FORMAT:
        raise ValueError(f"{name}: format {meta.get('format')!r}, not {OLD_FORMAT}")
    head = dict(meta["head"])
    lacking = [k for k in (*MOVED, *LATER) if k not in head]
    if lacking:
        raise ValueError(f"{name}: saved before {lacking[0]} existed; retrain it with `vlfss train`")
    prior = {}
    for old, (new, required) in MOVED.items():
        value = head.pop(old)
        if required is not None and value != required:
            raise ValueError(f"{name}: its prior uses {old[6:]}={value!r}, which vlfss no longer has; retrain it")
        if new is not None:
            prior[new] = value
    head["prior"] = dataclasses.asdict(TrainingFreeConfig(**prior))  # the rest: the defaults v1 priors used
    return {**meta, "format": HEAD_FORMAT, "head": head}


def upgrade(path: Path, out: Path) -> None:
    """Rewrite one head file with upgraded metadata and the same tensors."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("vlfss", "{}"))
        state = {k: f.get_tensor(k) for k in f.keys()}
    atomic_save_safetensors(state, out, metadata={"vlfss": json.dumps(upgrade_meta(meta, str(path)))})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("heads", nargs="+", type=Path, help="vlfss-head/1 files")
    ap.add_argument("--out", type=Path, help="write the converted files here (default: replace them in place)")
    args = ap.parse_args(argv)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    for path in args.heads:
        target = args.out / path.name if args.out else path
        try:
            upgrade(path, target)
        except (ValueError, KeyError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{path} -> {target} ({HEAD_FORMAT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
