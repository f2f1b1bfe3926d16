"""Feature cache: the encoder is frozen, so an image is encoded once per (model, variant, size).

Keys are ``model_id | variant | input size | sha1(image bytes + shape)``. An in-memory LRU holds
recent entries; an optional folder keeps them across runs as safetensors files (written atomically).
One cache may be shared by concurrent requests (the web app's threads): a lock guards the LRU and the
counters, and a disk write goes to a temporary name and is renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .io_utils import atomic_save_safetensors

log = logging.getLogger(__name__)


def content_hash(image: np.ndarray) -> str:
    """sha1 of an image array's bytes and shape (identical pixels -> identical key)."""
    a = np.ascontiguousarray(image)
    h = hashlib.sha1(a.tobytes())
    h.update(repr((a.shape, str(a.dtype))).encode())
    return h.hexdigest()


class FeatureCache:
    """LRU of tensor dicts, optionally backed by ``disk_dir``; counts hits and misses. Thread-safe."""

    def __init__(self, max_items: int = 512, disk_dir: str | Path | None = None) -> None:
        self.max_items = max_items
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self._mem: OrderedDict[str, dict[str, Tensor]] = OrderedDict()
        self._lock = threading.RLock()  # guards _mem, hits and misses (OrderedDict reordering is not atomic)
        self.hits = 0
        self.misses = 0
        if self.disk_dir:
            self.disk_dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(model_id: str, variant: str, size: tuple[int, int], image_hash: str) -> str:
        return f"{model_id}|{variant}|{size[0]}x{size[1]}|{image_hash}"

    def _path(self, key: str) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / (hashlib.sha1(key.encode()).hexdigest() + ".safetensors")

    def get(self, key: str) -> dict[str, Tensor] | None:
        with self._lock:
            value = self._mem.get(key)
            if value is not None:
                self._mem.move_to_end(key)
                self.hits += 1
                return value
        value = self._read_disk(key)  # outside the lock: a slow disk does not hold up memory hits
        with self._lock:
            if value is None:
                self.misses += 1
                return None
            self.hits += 1
            self._put_mem(key, value)
            return value

    def _read_disk(self, key: str) -> dict[str, Tensor] | None:
        if self.disk_dir is None:
            return None
        p = self._path(key)
        if not p.is_file():
            return None
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception:  # a damaged cache file is a miss, not a crash
            log.warning("ignoring unreadable cache file %s", p)
            return None

    def put(self, key: str, value: dict[str, Tensor]) -> None:
        value = {k: v.detach().cpu().contiguous() for k, v in value.items()}
        with self._lock:
            self._put_mem(key, value)
        if self.disk_dir is not None:  # atomic rename: concurrent writers of one key leave one whole file
            atomic_save_safetensors(value, self._path(key), metadata={"key": key})

    def _put_mem(self, key: str, value: dict[str, Tensor]) -> None:
        with self._lock:
            self._mem[key] = value
            self._mem.move_to_end(key)
            while len(self._mem) > self.max_items:
                self._mem.popitem(last=False)

    @property
    def hit_rate(self) -> float:
        with self._lock:
            n = self.hits + self.misses
            return self.hits / n if n else 0.0

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "hit_rate": round(self.hit_rate, 4),
                    "items": len(self._mem)}

    def __len__(self) -> int:
        with self._lock:
            return len(self._mem)

    def clear(self) -> None:
        with self._lock:
            self._mem.clear()


def stack_entry(entries: list[dict[str, Tensor]], name: str) -> Tensor:
    return torch.cat([e[name] for e in entries], dim=0)
