"""The run's published files, rebuilt from the journals once every image has a record: manifest.jsonl, coco.json,
suggestions and the Hugging Face dataset. They follow the image list's order, so they are the same bytes
whether one process or many labelled the images, in one pass or several."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import VlfssError
from .config import LabelConfig
from .precision import encoder_precision
from .sources import ImageSource, Item, decode
from .state import RecordReader, Ref, sweep_temporaries
from .suggest import candidates, pooled_feature, select_diverse, write_suggestions
from .writers import hf_row, write_coco, write_hf_dataset, write_manifest

log = logging.getLogger(__name__)


def complete(source: ImageSource, refs: dict[str, Ref]) -> bool:
    """Whether every image of the list has a record (done or failed) in some journal."""
    return all(it.path in refs for it in source.items)


def _done(source: ImageSource, refs: dict[str, Ref], reader: RecordReader) -> Iterator[tuple[int, Item, dict]]:
    """(COCO image id = 1-based position in the list, item, record) of the done images, in list order."""
    for i, it in enumerate(source.items):
        ref = refs.get(it.path)
        if ref is not None and ref.status == "done":
            yield i + 1, it, reader(ref)


def finalize(out: Path, source: ImageSource, seg: Any, request: Any, cfg: LabelConfig, precision: str,
             refs: dict[str, Ref]) -> None:
    """Write the published files of a complete run (each atomically)."""
    sweep_temporaries(out, per_image=True, top=False)  # every image is recorded: nobody writes those any more
    reader = RecordReader()
    try:
        write_manifest(out / "manifest.jsonl", reader.iterate([it.path for it in source.items], refs, status=None))
        if cfg.coco:
            info = {"description": "vlfss label", "model": seg.backbone.model_id, "mode": request.mode,
                    "precision": precision, "image_root": source.root}
            write_coco(out / "coco.json", request.class_names, lambda: _done(source, refs, reader), info)
        if cfg.suggest:
            suggest(out, source, seg, request, list(_done(source, refs, reader)), cfg, precision)
        if cfg.hf_dataset:
            rows = [(it, refs[it.path]) for _, it, _ in _done(source, refs, reader)]
            write_hf_dataset(out / "hf_dataset", _hf_rows, request.class_names,
                             {"out": str(out), "source": source, "rows": rows})
    finally:
        reader.close()


def _hf_rows(out: str, source: ImageSource, rows: list[tuple[Item, Ref]]) -> Iterator[dict[str, Any]]:
    reader = RecordReader()
    try:
        for item, ref in rows:
            yield hf_row(item, source.read(item), Path(out) / "labels" / f"{item.name}.png", reader(ref))
    finally:
        reader.close()


def suggest(out: Path, source: ImageSource, seg: Any, request: Any, done: list[tuple[int, Item, dict]],
            cfg: LabelConfig, precision: str) -> list[dict]:
    """Choose ``cfg.suggest`` images (uncertainty with diversity) and write suggest.txt / suggest.png."""
    scores = [r["uncertainty"] for _, _, r in done]
    pool = candidates(scores, cfg.suggest)
    images, feats, kept = [], [], []
    for start in range(0, len(pool), cfg.batch_size):  # the candidates' features, for the diversity term
        batch = []
        for j in pool[start:start + cfg.batch_size]:
            _, item, _ = done[j]
            try:
                batch.append((j, decode(source.read(item), item.path)))
            except (OSError, VlfssError) as e:  # changed or gone since it was labelled
                log.warning("suggestions: skipping %s (%s)", item.path, e)
        with torch.no_grad(), encoder_precision(seg, precision):
            enc = seg.encode([img for _, img in batch], request.variant) if batch else []
        for (j, img), e in zip(batch, enc):
            kept.append(j)
            images.append(img)
            feats.append(pooled_feature(e))
    if not kept:
        return []
    picks = select_diverse([scores[j] for j in kept], np.stack(feats), cfg.suggest, cfg.diversity)
    chosen = [done[kept[p]][2] for p in picks]
    write_suggestions(out, chosen, [images[p] for p in picks])
    return chosen
