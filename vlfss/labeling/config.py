"""What a labelling run does besides the segmenter's own settings: batching, precision, outputs, sharding.

A plain dataclass with no torch import (the CLI reads its defaults from here), loadable with
``vlfss.config.load_config(LabelConfig, yaml_file, ["batch_size=16", ...])``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..errors import InputError

Precision = Literal["auto", "fp32", "bf16"]
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass
class LabelConfig:
    """One labelling run's options (the classes and the model are the segmenter's)."""

    batch_size: int = 8  # query images encoded together; a batch is also the unit processes share out
    workers: int = 2  # processes decoding images ahead of the model (0: decode in the main process)
    writers: int = 2  # threads scoring each image and writing its files while the next batch is encoded
    precision: Precision = "auto"  # encoder arithmetic: auto = bf16 where it measured faster on bf16 units, else fp32
    overlay: bool = False  # also write overlays/<name>.png (the image with class colours and boundaries)
    confidence: bool = False  # also write confidence/<name>.png (max class probability as a heat map)
    coco: bool = True  # write coco.json (categories, images, annotations with RLE masks) when the run completes
    hf_dataset: bool = False  # write hf_dataset/ (datasets.save_to_disk; image + mask columns) when complete
    suggest: int = 0  # > 0: write the K most informative images to suggest.txt and suggest.png
    diversity: float = 0.5  # weight of the near-duplicate penalty when choosing suggestions (0: pure uncertainty)
    image_column: str | None = None  # the image column of a Hugging Face dataset SOURCE (None: find it)
    shard: str | None = None  # "I/N": this job labels the I-th of N shares (0-based), e.g. one task of a job array
    overwrite: bool = False  # start over: discard what an earlier run in the output folder wrote
    progress: bool = True  # a progress bar with images/s and ETA on stderr


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N; None -> (0, 1). An InputError shows the expected form."""
    if text is None:
        return 0, 1
    m = _SHARD.match(str(text))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise InputError(f"--shard {text!r}: expected I/N with 0 <= I < N (0-based share I of N), e.g. --shard 0/4")
    return int(m.group(1)), int(m.group(2))


def check_label_config(cfg: LabelConfig) -> None:
    """Reject values that cannot work, naming the option."""
    for key, low in (("batch_size", 1), ("workers", 0), ("writers", 1), ("suggest", 0)):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{key.replace('_', '-')} must be an integer >= {low}, got {value!r}")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise InputError(f"precision must be auto, fp32 or bf16, got {cfg.precision!r}")
    if not 0.0 <= float(cfg.diversity) <= 10.0:
        raise InputError(f"diversity must be between 0 and 10, got {cfg.diversity!r}")
    parse_shard(cfg.shard)
