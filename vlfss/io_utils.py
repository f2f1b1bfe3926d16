"""Atomic writes: every file the tool writes goes to a temporary name in the same folder, then is renamed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import InputError


def _ordinary_permissions(path: str | Path) -> None:
    """rw for everyone the umask allows, as open() would give (mkstemp's files are owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _tmp_for(path: Path) -> Path:
    """An empty temporary file beside ``path`` with ordinary permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    _ordinary_permissions(tmp)
    return Path(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one, never half."""
    path = Path(path)
    tmp = _tmp_for(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: object) -> None:
    """``obj`` as indented JSON, atomically, creating the parent folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def file_digest(path: str | Path) -> str:
    """SHA-1 of a file's bytes, read in chunks (names a fitted file in cache keys, an uploaded prompt file whatever
    its temporary name)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None):
    """safetensors.save_file through a temporary name."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = _tmp_for(path)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        _ordinary_permissions(tmp)  # safetensors re-creates the file owner-only
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_save_image(image, path: str | Path) -> None:
    """Save a PIL image as PNG atomically."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def check_writable_dir(path: str | Path, what: str = "output folder", fix: str = "choose another with --out",
                       need_bytes: int = 0) -> Path:
    """Create ``path`` if needed and prove it is writable (and has ``need_bytes`` free) before any work is done;
    an InputError names the folder and ``fix`` otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".vlfss-write-test"):
            pass
    except OSError as e:
        raise InputError(f"{what} {path} is not writable ({e.strerror or e}); {fix}") from None
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise InputError(f"{what} {path} has {free / 2**20:.1f} MiB free but needs about {need_bytes / 2**20:.1f} "
                         f"MiB; free space or {fix}")
    return path
