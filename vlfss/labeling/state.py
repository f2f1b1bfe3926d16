"""A labelling run's state on disk: what it was asked (run.json) and what it has done (journals).

``run.json`` records the options that decide the labels (model, mode, classes and their inputs, precision,
outputs); a rerun with other options is refused, naming what changed, unless it overwrites. Each process
appends one JSON line per finished image to its own journal (``.vlfss-label/journal-<I>-of-<N>.jsonl``) after
the image's files are in place, so a run killed at any moment resumes from the journals: a torn last line is
cut off, an image is done when its line is there and its file content hash still matches. The published
files (manifest.jsonl, coco.json, ...) are rebuilt from the journals, in the image list's order, once every
image has a line, so they do not depend on which process finished what, or when.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io_utils import atomic_write_text

STATE_DIR = ".vlfss-label"
RUN_FILE = "run.json"
FORMAT = 1
# everything a run writes in its output folder (what --overwrite may delete, and nothing else)
OUTPUTS = ("labels", "overlays", "confidence", "manifest.jsonl", "coco.json", "hf_dataset", "suggest.txt",
           "suggest.png", RUN_FILE, STATE_DIR)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``key: old -> new`` for every option that differs, joined with '; '."""
    keys = sorted(set(old) | set(new))
    return "; ".join(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys if old.get(k) != new.get(k))


def recorded_run(out: Path) -> dict[str, Any] | None:
    """The options an earlier run recorded in ``out``, or None."""
    path = out / RUN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is unreadable ({e}); pass --overwrite to start over, or another --out") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("options"), dict):
        raise InputError(f"{path} was not written by this version of vlfss label; pass --overwrite or another --out")
    return data["options"]


def clear_outputs(out: Path) -> None:
    """Delete what a labelling run writes in ``out`` (only those names)."""
    for name in OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def claim_output(out: Path, options: dict[str, Any], overwrite: bool) -> None:
    """Check ``out`` against ``options`` (refusing a different earlier run unless ``overwrite``) and record them."""
    old = recorded_run(out) if not overwrite else None
    if old is not None and old != options:
        raise InputError(f"{out} holds a labelling run with other options ({describe_changes(old, options)}); "
                         "pass --overwrite to relabel everything, or choose another --out")
    if overwrite:
        clear_outputs(out)
    elif old is None:
        stray = [n for n in OUTPUTS if (out / n).exists()]
        if stray:
            raise InputError(f"{out} already holds {stray[0]} but no {RUN_FILE} of a labelling run; pass --overwrite "
                             "to replace it, or choose another --out")
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    if old is None:
        atomic_write_text(out / RUN_FILE, json.dumps({"format": FORMAT, "options": options}, indent=2) + "\n")


def sweep_temporaries(out: Path, per_image: bool = True, top: bool = True) -> int:
    """Delete the temporary files of writes a killed process left behind (``.<name>.<random>.tmp``); returns the
    count. Call it only when no other process can be writing there (see ``run_label`` and ``finalize``)."""
    found: list[Path] = []
    if per_image:
        for d in ("labels", "overlays", "confidence"):
            if (out / d).is_dir():
                found.extend((out / d).rglob(".*.tmp"))
    if top:
        found.extend(out.glob(".*.tmp"))
        for p in out.glob(".hf_dataset.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
    for p in found:
        p.unlink(missing_ok=True)
    return len(found)


# ------------------------------------------------------------------------------------------ journals
def _repair_tail(path: Path) -> None:
    """Cut a torn last line (a process killed mid-write) so appends start on a line of their own."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


class Journal:
    """Append-only JSON lines of one process; thread-safe; each line reaches the OS before ``append`` returns."""

    def __init__(self, path: Path) -> None:
        _repair_tail(path)
        self.path = path
        self._f = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps({**record, "t": time.time_ns()}) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.flush()
                os.fsync(self._f.fileno())
                self._f.close()


def journal_path(out: Path, rank: int, world: int) -> Path:
    return out / STATE_DIR / f"journal-{rank}-of-{world}.jsonl"


@dataclass(frozen=True)
class Ref:
    """Where an image's latest record is, and what decides whether it still counts."""

    file: str  # journal file
    offset: int  # byte offset of the line
    status: str  # "done" or "failed"
    hash: str | None  # content hash of the image it describes (None if the file could not be read)
    t: int  # when it was written (ns)


def read_refs(out: Path) -> dict[str, Ref]:
    """Per image path, the best record over all journals: a done one over a failed one, then the latest."""
    refs: dict[str, Ref] = {}
    for jf in sorted((out / STATE_DIR).glob("journal-*.jsonl")):
        with open(jf, "rb") as f:
            offset = 0
            for raw in f:
                start, offset = offset, offset + len(raw)
                if not raw.endswith(b"\n"):
                    break  # torn tail of a killed process
                try:
                    r = json.loads(raw)
                    ref = Ref(str(jf), start, r["status"], r.get("hash"), int(r["t"]))
                    path = r["path"]
                except (ValueError, KeyError, TypeError):
                    continue
                old = refs.get(path)
                if old is None or (ref.status == "done", ref.t) >= (old.status == "done", old.t):
                    refs[path] = ref
    return refs


class RecordReader:
    """Reads records back by reference, keeping the journals open (for the final outputs)."""

    def __init__(self) -> None:
        self._files: dict[str, Any] = {}

    def __call__(self, ref: Ref) -> dict[str, Any]:
        f = self._files.get(ref.file)
        if f is None:
            f = self._files[ref.file] = open(ref.file, "rb")
        f.seek(ref.offset)
        return json.loads(f.readline())

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    def iterate(self, paths: list[str], refs: dict[str, Ref], status: str | None = "done") -> Iterator[dict]:
        for p in paths:
            ref = refs.get(p)
            if ref is not None and (status is None or ref.status == status):
                yield self(ref)
