"""Where a backbone's weights come from, and failing fast (with the fix) when they cannot come.

Rules shared by every adapter:

* ``pretrained="random"`` (``--pretrained random``) is the only way to get randomly initialised weights;
  nothing else ever falls back to random weights.
* A path-like ``pretrained`` must be an existing file; the error names that path.
* Weights from the Hugging Face hub (open_clip tags, ``hf-hub:`` names, timm models, transformers repos) are
  looked up in the local cache first. When they are not there and the hub cannot be used (``HF_HUB_OFFLINE``
  is set, or a 3 s TCP probe of the hub fails) loading stops at once with a message that says how to pass a
  local file, instead of spending about a minute in huggingface_hub's retries.

``huggingface_hub`` is imported inside the functions that need it: it is an optional dependency of the
adapters (open_clip, timm, transformers), not of the package.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
import urllib.request
from pathlib import Path

from ...errors import ModelError

RANDOM = "random"  # the explicit request for randomly initialised weights (tests, speed benchmarks)
PROBE_TIMEOUT_S = 3.0  # how long to wait for a TCP connection to the hub before calling it unreachable
_TRUE = {"1", "on", "yes", "true"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def weights_id(pretrained: str) -> str:
    """The weights' part of a model id: ``name:size`` for a local file, else the tag (or ``random``)."""
    p = Path(pretrained)
    if p.is_file():
        return f"{p.name}:{p.stat().st_size}"
    return pretrained


def looks_like_path(value: str) -> bool:
    """Whether ``value`` is meant as a file path (a separator, ``~``, or a weights suffix), not a tag."""
    return os.sep in value or "/" in value or value.startswith("~") or value.lower().endswith(_WEIGHT_SUFFIXES)


def existing_file(pretrained: str, model: str) -> str:
    """``pretrained`` as an existing file path; ModelError naming the user's path otherwise."""
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path)
    what = "is a folder, not a file" if path.is_dir() else "does not exist"
    raise ModelError(f"weights file {pretrained} (--pretrained for {model}) {what}; pass an existing checkpoint "
                     f"file, or --pretrained {RANDOM} for random weights")


def hub_offline() -> bool:
    """Whether the user switched the hub off (``HF_HUB_OFFLINE``), read now so tests and users can set it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _probe_address(url: str) -> tuple[str, int]:
    """(host, port) a download of ``url`` connects to first: the https proxy when one is set."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    proxy = urllib.request.getproxies().get(parts.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return p.hostname or "", p.port or 80
    return host, parts.port or (443 if parts.scheme != "http" else 80)


def unreachable_reason(url: str | None = None) -> str | None:
    """Why the hub (or ``url``) cannot be used now, or None when it can: the offline switch, else a TCP probe."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    if url is None:
        from huggingface_hub import constants

        url = constants.ENDPOINT
    host, port = _probe_address(url)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"{host} cannot be reached ({e.strerror or type(e).__name__})"
    return None


def cached_hub_file(repo: str, filenames: list[str], cache_dir: str | None) -> str | None:
    """The first of ``filenames`` in ``repo`` that the local hub cache already holds, or None."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        path = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
        if isinstance(path, str) and Path(path).is_file():
            return path
    return None


def offline_error(what: str, reason: str, fix: str) -> ModelError:
    """The one message for weights that are neither cached nor downloadable now."""
    return ModelError(f"{what} are not in the local cache and cannot be downloaded: {reason}. {fix}")


def download_hub_file(repo: str, filenames: list[str], cache_dir: str | None, what: str, fix: str) -> str:
    """Download the first of ``filenames`` that ``repo`` has (the caller checked the cache and the hub)."""
    from huggingface_hub import hf_hub_download

    errors = []
    for name in filenames:
        try:
            return hf_hub_download(repo, name, cache_dir=cache_dir)
        except Exception as e:  # 404 for one candidate name; the next may exist
            errors.append(f"{name}: {type(e).__name__}")
    raise ModelError(f"could not download {what} from the Hugging Face hub ({'; '.join(errors)}). {fix}")


def hub_file(repo: str, filenames: list[str], cache_dir: str | None, what: str, fix: str) -> str:
    """A local path of the first of ``filenames`` in hub ``repo``: from the cache, else downloaded.

    Fails fast with ``offline_error`` when the file is not cached and the hub cannot be used.
    """
    cached = cached_hub_file(repo, filenames, cache_dir)
    if cached:
        return cached
    reason = unreachable_reason()
    if reason:
        raise offline_error(what, reason, fix)
    return download_hub_file(repo, filenames, cache_dir, what, fix)


def hub_repo_cached(repo: str, cache_dir: str | None) -> bool:
    """Whether a transformers-style repo (its config.json) is in the local hub cache."""
    return cached_hub_file(repo, ["config.json"], cache_dir) is not None
