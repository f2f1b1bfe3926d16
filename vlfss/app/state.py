"""What the app's sessions share and what each keeps.

``SegmenterRegistry``: one ``Segmenter`` per offered model, built once on first use behind a per-model lock
and shared by every session (its feature cache is thread-safe). ``SessionStore``: per browser session, the
prepared class side of recent requests (``Segmenter.prepare``: text embeddings, encoded supports, scoring
state) keyed by the content of the class inputs, so clicking Segment again with the same supports re-encodes
nothing; and the session's learned prompt files, kept off the shared segmenter.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache import content_hash
from ..errors import InputError
from ..io_utils import file_digest
from ..modeling.config import SegmenterConfig
from ..segmenter import Request, Segmenter

log = logging.getLogger(__name__)


class SegmenterRegistry:
    """Offered models by name -> their config; each segmenter is built once, lazily, and shared."""

    def __init__(self, configs: dict[str, SegmenterConfig],
                 build: Callable[[SegmenterConfig], Segmenter] = Segmenter.from_config) -> None:
        if not configs:
            raise InputError("the app needs at least one model")
        self.configs = dict(configs)
        self._build = build
        self._segmenters: dict[str, Segmenter] = {}
        self._locks = {name: threading.Lock() for name in self.configs}
        self._views: dict[tuple[str, str], Segmenter] = {}  # (model, inference strategy) -> view
        self.builds = 0  # segmenters actually built (for tests: once per model)

    @property
    def names(self) -> list[str]:
        return list(self.configs)

    def with_inference(self, name: str, inference: str | None) -> Segmenter:
        """The shared segmenter of ``name`` with another inference strategy (resize / slide / multiscale / auto):
        a view sharing its backbone, head and feature cache (the cache keys tell the strategies apart)."""
        seg = self.get(name)
        if inference is None or inference == seg.cfg.inference:
            return seg
        with self._locks[name]:
            view = self._views.get((name, inference))
            if view is None:
                view = copy.copy(seg)
                view.cfg = dataclasses.replace(seg.cfg, inference=inference)
                self._views[(name, inference)] = view
        return view

    def warm(self, name: str) -> threading.Thread:
        """Build ``name``'s segmenter in a background thread (a build error is raised again by ``get``)."""

        def build() -> None:
            try:
                self.get(name)
            except Exception as e:  # noqa: BLE001 - the first request reports it with its message
                log.warning("could not build %s in advance: %s", name, e)

        thread = threading.Thread(target=build, name=f"vlfss-build-{name}", daemon=True)
        thread.start()
        return thread

    def get(self, name: str) -> Segmenter:
        """The shared segmenter for ``name`` (built on first use; a concurrent first use waits for it)."""
        if name not in self.configs:
            raise InputError(f"model {name!r} is not offered by this app; choose one of {', '.join(self.configs)}")
        seg = self._segmenters.get(name)
        if seg is not None:
            return seg
        with self._locks[name]:
            seg = self._segmenters.get(name)
            if seg is None:
                log.info("building segmenter %s", name)
                seg = self._build(self.configs[name])
                self.builds += 1
                self._segmenters[name] = seg
        return seg


def request_key(model: str, mode: str, texts: Sequence[str | None], supports: Sequence[Sequence[tuple]],
                negatives: Sequence[Any], prompt_digest: str | None) -> str:
    """A digest of everything ``Segmenter.prepare`` depends on: equal keys give equal prepared requests."""
    parts: list[str] = [model, mode, repr(list(texts)), prompt_digest or "-"]
    for ci, pairs in enumerate(supports):
        parts.append(f"class{ci}:" + ",".join(content_hash(img) + "/" + content_hash(m) for img, m in pairs))
    for n in negatives:
        parts.append("neg:" + (n if isinstance(n, str) else content_hash(n[0]) + "/" + content_hash(n[1])))
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


@dataclass
class Session:
    """One browser session's reusable state."""

    requests: OrderedDict[str, Request] = field(default_factory=OrderedDict)  # request_key -> prepared request
    views: dict[tuple[str, str], Segmenter] = field(default_factory=dict)  # (model, prompt digest) -> view
    lock: threading.Lock = field(default_factory=threading.Lock)  # one request of a session prepares at a time


class SessionStore:
    """Bounded LRU of sessions (old sessions drop out), each with a bounded LRU of prepared requests."""

    def __init__(self, max_sessions: int = 64, max_requests: int = 4) -> None:
        self.max_sessions = max_sessions
        self.max_requests = max_requests
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self.prepares = 0  # class sides actually prepared (cache misses), for tests

    def session(self, session_id: str) -> Session:
        with self._lock:
            s = self._sessions.get(session_id)
            if s is None:
                s = self._sessions[session_id] = Session()
            self._sessions.move_to_end(session_id)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
            return s

    def prepared(self, session_id: str, key: str, prepare: Callable[[], Request]) -> Request:
        """The session's prepared request for ``key``, preparing it (once) when absent."""
        s = self.session(session_id)
        with s.lock:
            req = s.requests.get(key)
            if req is None:
                req = prepare()
                self.prepares += 1
                s.requests[key] = req
                while len(s.requests) > self.max_requests:
                    s.requests.popitem(last=False)
            s.requests.move_to_end(key)
            return req

    def prompt_view(self, session_id: str, model: str, seg: Segmenter,
                    prompt_file: str | Path) -> tuple[Segmenter, list[str], str]:
        """A view of the shared segmenter with the session's learned prompt file registered, the file's class
        names and its digest. The view shares the backbone, head and feature cache; only its prompt registry is
        its own, so one session's prompts never change another's results."""
        digest = file_digest(prompt_file)
        s = self.session(session_id)
        with s.lock:
            view = s.views.get((model, digest))
            if view is None:
                view = prompt_view(seg, prompt_file)
                s.views = {(model, digest): view}  # one prompt file per session at a time
        return view, list(view.prompt_learners), digest


def prompt_view(seg: Segmenter, prompt_file: str | Path) -> Segmenter:
    """A shallow copy of ``seg`` whose prompt registry holds ``prompt_file``'s classes (the CLI's checks: a file
    learned on another model is refused)."""
    view = copy.copy(seg)  # shares the modules, config, templates and the (thread-safe) feature cache
    view.prompt_learners = {}
    try:
        view.use_prompt_file(str(prompt_file))
    except InputError as e:
        raise InputError(str(e).replace(str(prompt_file), Path(prompt_file).name)) from None
    return view

