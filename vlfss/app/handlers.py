"""The page's actions as plain functions over plain values (paths, arrays, the editor's dicts): Segment, add an
example, learn a prompt. Gradio calls them through ``ui``; tests call them directly. Bad input raises the
CLI's ``InputError`` / ``ModelError``; ``ui`` shows its one line."""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..modeling.config import INFERENCES
from ..modeling.types import SegmentationOutput
from .export import write_downloads
from .inputs import Limits, class_names_text, read_example, read_queries
from .state import SegmenterRegistry, SessionStore, request_key

log = logging.getLogger(__name__)

MODES = ("auto", "training-free", "learned")
Example = tuple[np.ndarray, np.ndarray]  # (RGB image, {0,1,255} mask) of one support or negative example


@dataclass
class ClassForm:
    """One class as the page sends it: a name and/or examples (saved earlier, plus the editor's current one)."""

    name: str | None = None  # the class name typed by the user
    editor: dict | None = None  # the image editor's value: {"background", "layers", "composite"}
    mask_file: str | None = None  # an uploaded mask PNG for the editor's image (instead of painting)
    saved: list[Example] = field(default_factory=list)  # examples added with "Add example"


@dataclass
class SegmentForm:
    """Everything a Segment click sends."""

    queries: list[str]  # uploaded query image files
    classes: list[ClassForm]  # the class tabs, in order (empty ones are skipped)
    negative_names: str = ""  # comma-separated names of what is NOT a class
    negative: ClassForm = field(default_factory=ClassForm)  # painted examples of what is NOT a class
    model: str = "vlfss-tiny"  # one of the app's models
    mode: str = "auto"  # auto, training-free or learned
    prompt_file: str | None = None  # a learned prompt file (its classes use the learned context)
    inference: str | None = None  # one of INFERENCES; None: the model's configured strategy


@dataclass
class SegmentResult:
    """What the page shows for one Segment click."""

    names: list[str]  # query file names
    images: list[np.ndarray]  # query images, H x W x 3 uint8
    outputs: list[SegmentationOutput]  # one per query
    files: list[Path]  # downloads: label PNGs and the COCO JSON
    model: str
    mode: str  # the mode the request ran in
    seconds: float  # server time of the whole action

    @property
    def class_names(self) -> list[str]:
        return self.outputs[0].class_names if self.outputs else []

    def table(self) -> list[list[Any]]:
        """Rows: image, class, area %, area px, mean confidence (inside the class's mask)."""
        rows = []
        for name, out in zip(self.names, self.outputs):
            for c in out.summary()["classes"]:
                rows.append([name, c["name"], round(100 * c["area_frac"], 2), c["area_px"], c["mean_confidence"]])
        return rows


def examples_of(form: ClassForm, what: str, limits: Limits) -> list[Example]:
    """The saved examples plus the editor's current one (if it holds an image)."""
    current = read_example(form.editor, form.mask_file, f"{what} support {len(form.saved) + 1}", limits)
    return [*form.saved, *([current] if current is not None else [])]


class AppHandlers:
    """The app's actions over shared state: the segmenters, the sessions, the limits, a folder for downloads."""

    def __init__(self, registry: SegmenterRegistry, limits: Limits | None = None, workdir: str | Path | None = None,
                 sessions: SessionStore | None = None, keep_results: int = 256) -> None:
        import atexit
        import tempfile

        self.registry = registry
        self.limits = limits or Limits()
        self.sessions = sessions or SessionStore()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="vlfss-app-"))
        if workdir is None:  # our own temporary folder: removed when the process ends
            atexit.register(shutil.rmtree, self.workdir, True)
        self.keep_results = keep_results  # result folders kept on disk (the oldest are removed)
        self._results: list[Path] = []
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------------------- segment
    def segment(self, form: SegmentForm, session: str = "local") -> SegmentResult:
        """Segment the query images with the form's classes; raises InputError with the CLI's messages."""
        t0 = time.perf_counter()
        if form.mode not in MODES:
            raise InputError(f"mode {form.mode!r} is not one of {', '.join(MODES)}")
        if form.inference is not None and form.inference not in INFERENCES:
            raise InputError(f"inference {form.inference!r} is not one of {', '.join(INFERENCES)}")
        queries = read_queries(form.queries, self.limits)
        seg = self.registry.with_inference(form.model, form.inference)
        model_key = f"{form.model}|{seg.cfg.inference}"  # the strategy changes how supports are encoded too
        prompt_names: list[str] = []
        digest = None
        if form.prompt_file:
            seg, prompt_names, digest = self.sessions.prompt_view(session, model_key, seg, form.prompt_file)
        texts, supports = self._classes(form, prompt_names)
        negatives = self._negatives(form)
        mode = seg.mode if form.mode == "auto" else form.mode
        key = request_key(model_key, mode, texts, supports, negatives, digest)
        request = self.sessions.prepared(session, key, lambda: seg.prepare(
            texts if any(texts) else None, supports if any(supports) else None, negatives or None, mode))
        outputs = seg.predict([img for _, img in queries], request)
        names = [n for n, _ in queries]
        files = write_downloads(self._result_dir(), names, outputs)
        return SegmentResult(names, [img for _, img in queries], outputs, files, form.model, request.mode,
                             time.perf_counter() - t0)

    def _classes(self, form: SegmentForm, prompt_names: list[str]) -> tuple[list[str | None], list[list[Example]]]:
        texts: list[str | None] = []
        supports: list[list[Example]] = []
        for i, c in enumerate(form.classes):
            name = (c.name or "").strip() or None
            examples = examples_of(c, f"class {i + 1}", self.limits)
            if name is None and not examples:
                continue  # an empty tab
            texts.append(name)
            supports.append(examples)
        if not texts and prompt_names:  # like the CLI: a prompt file alone gives its classes
            texts, supports = list(prompt_names), [[] for _ in prompt_names]
        if not texts:
            raise InputError("nothing to segment: type a class name and/or paint a support example in a class tab "
                             "(or upload a learned prompt file)")
        if len(set(t for t in texts if t)) < len([t for t in texts if t]):
            raise InputError("two classes have the same name; give each class its own name")
        return texts, supports

    def _negatives(self, form: SegmentForm) -> list[Example | str]:
        names = class_names_text(form.negative_names)
        return [*examples_of(form.negative, "negative", self.limits), *names]

    def _result_dir(self) -> Path:
        """A fresh folder for one action's files; the oldest beyond ``keep_results`` are removed."""
        d = self.workdir / "results" / uuid.uuid4().hex
        with self._lock:
            self._results.append(d)
            old, self._results = self._results[:-self.keep_results], self._results[-self.keep_results:]
        for o in old:
            shutil.rmtree(o, ignore_errors=True)
        return d

    # ----------------------------------------------------------------------------------------- examples
    def add_example(self, form: ClassForm, what: str = "class 1") -> list[Example]:
        """The form's saved examples with the editor's current one appended (checked like a Segment would)."""
        current = read_example(form.editor, form.mask_file, f"{what} support {len(form.saved) + 1}", self.limits)
        if current is None:
            raise InputError(f"{what}: no example to add; upload an image in the editor and paint the object")
        return [*form.saved, current]

    # ----------------------------------------------------------------------------------------- prompts
    def learn_prompt(self, form: ClassForm, model: str, what: str = "class 1") -> tuple[Path, str]:
        """Learn a prompt (``vlfss.tune_prompts``) for the class's name from its examples; returns the prompt file
        and a one-line summary."""
        from .. import tune_prompts
        from ..modeling.prompts import read_prompt_file

        name = (form.name or "").strip()
        if not name:
            raise InputError(f"{what}: type the class name the prompt is for")
        examples = examples_of(form, what, self.limits)
        if not examples:
            raise InputError(f"{what}: learning a prompt needs examples; upload an image and paint the object")
        seg = self.registry.get(model)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "class"
        out = self._result_dir() / f"prompt_{safe}.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        tune_prompts(seg, name, [img for img, _ in examples], [m for _, m in examples], out)
        meta, _ = read_prompt_file(out)

        def pct(v: Any) -> str:
            return "n/a" if v is None else f"{100 * v:.1f}"

        return out, (f"learned a prompt for '{name}' on {len(examples)} example(s): training IoU "
                     f"{pct(meta.get('train_iou_templates'))} (templates) -> {pct(meta.get('train_iou_tuned'))} "
                     "(learned); it is now the prompt file for Segment")
