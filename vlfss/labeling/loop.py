"""The batched loop of one process: decode ahead in worker processes, encode a batch in the main thread, then
score each image (``Segmenter.logits``) and write its files in a pool of threads, and journal it.

Scoring runs in the threads because it is many small operations per image (the learned head's per-pair
similarity maps and decoder convolutions at 4x the patch grid) that keep a core busy poorly on their own; in
threads beside the batched encoder they ran the tiny model's learned mode about 2x faster (docs/label.md).

Batches are fixed chunks of the run's sorted image list (``chunks``), and a process computes whole chunks, so
every image is encoded in the same batch whatever the number of processes and however often the run was
interrupted: the outputs are the same bytes even where a kernel's result depends on the batch it runs in.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import InputError, VlfssError
from ..modeling import functional as fn
from ..modeling.types import Encoded
from .precision import encoder_precision
from .sources import ImageSource, Item, content_hash, decode
from .state import Journal
from .writers import ImageWriter, failed_record

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent dies (linux/prctl.h)


def encoder_sides(seg) -> list[int | None]:
    """The long sides ``Segmenter.predict`` encodes an image at: [None] (its inference strategy's own), or one per
    scale in multiscale inference."""
    if seg.cfg.inference != "multiscale":
        return [None]
    native = seg.cfg.input_size or seg.backbone.image_size
    return [round(native * r) for r in seg.cfg.scales]


def image_logits(seg, request, encs: Sequence[Encoded], image: np.ndarray) -> torch.Tensor:
    """(N+1) x H x W logits of one image from its features at each of ``encoder_sides``, exactly as
    ``Segmenter.predict`` makes them: per-class log-odds (averaged over scales), N-way, then the refinement."""
    fg = [seg.logits(q, request) for q in encs]
    fg = torch.stack(fg).mean(0) if seg.cfg.inference == "multiscale" else fg[0]
    logits = fn.nway_logits(fg.unsqueeze(0))[0]
    return seg.refine_logits(image, logits, request.refine)  # the request's refinement (size cap included)


def chunks(n: int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This process's batches: chunk c = images [c*B, (c+1)*B) of the sorted list, chunks range(rank, C, world)."""
    starts = range(0, n, batch_size)
    return [list(range(s, min(s + batch_size, n))) for s in list(starts)[rank::world]]


@dataclass
class Loaded:
    """What a decoding worker hands the model: the image, or why there is none."""

    index: int  # into the source's items
    digest: str | None  # content hash of the encoded bytes (None when they could not be read)
    image: np.ndarray | None = None  # RGB H x W x 3 uint8
    error: str | None = None  # one line, for the manifest
    unchanged: bool = False  # done earlier with the same content hash, and not needed for its batch


class _Decode(Dataset):
    """Reads, hashes and (where needed) decodes items; never raises, so one bad file never stops a run."""

    def __init__(self, source: ImageSource, done: dict[int, str], must_decode: set[int]) -> None:
        self.source, self.done, self.must_decode = source, done, must_decode

    def __len__(self) -> int:
        return len(self.source.items)

    def __getitem__(self, i: int) -> Loaded:
        item = self.source.items[i]
        try:
            data = self.source.read(item)
        except OSError as e:
            return Loaded(i, None, error=f"cannot read {item.path}: {e.strerror or e}")
        except VlfssError as e:
            return Loaded(i, None, error=str(e))
        digest = content_hash(data)
        if self.done.get(i) == digest and i not in self.must_decode:
            return Loaded(i, digest, unchanged=True)
        try:
            return Loaded(i, digest, image=decode(data, item.path))
        except VlfssError as e:
            return Loaded(i, digest, error=str(e))
        except Exception as e:  # a decoder bug or an exotic file must not stop a 100k-image run
            return Loaded(i, digest, error=f"{item.path}: {type(e).__name__}: {e}")


def _as_list(batch: list[Loaded]) -> list[Loaded]:
    return batch


def _die_with_parent(parent: int, _worker_id: int) -> None:
    """A decoding worker ends when the labelling process does, even one killed with SIGKILL (Linux): otherwise it
    waits forever on a queue nobody reads."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl: the worker's own parent check stays the only guard
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


@dataclass
class LoopStats:
    """Counts of one process's pass."""

    total: int = 0  # images in this process's share
    done: int = 0  # labelled in this pass
    skipped: int = 0  # done by an earlier pass, unchanged
    failed: int = 0  # recorded as failed in this pass
    seconds: float = 0.0  # wall time of the loop
    failures: list[str] = field(default_factory=list)  # the first few reasons, for the summary


@dataclass
class Loop:
    """One process's labelling pass over its chunks."""

    seg: object  # the Segmenter
    request: object  # its prepared Request
    source: ImageSource
    writer: ImageWriter
    journal: Journal
    precision: str  # "fp32" or "bf16"
    workers: int = 2
    writers: int = 2  # threads scoring and writing images
    progress: Callable[[int], None] | None = None  # called with the number of images finished

    def run(self, my_chunks: list[list[int]], done: dict[int, str]) -> LoopStats:
        """Label the images of ``my_chunks``; ``done``: index -> content hash of images labelled earlier."""
        stats = LoopStats(total=sum(map(len, my_chunks)))
        must = {i for c in my_chunks if any(j not in done for j in c) for i in c}  # chunks computed whole
        loader = DataLoader(_Decode(self.source, done, must), batch_sampler=my_chunks, collate_fn=_as_list,
                            num_workers=self.workers, prefetch_factor=2 if self.workers else None,
                            worker_init_fn=functools.partial(_die_with_parent, os.getpid()) if self.workers else None)
        pending: deque[Future] = deque()
        t0 = time.perf_counter()
        pool = ThreadPoolExecutor(self.writers, thread_name_prefix="vlfss-label-write")
        try:
            for batch in loader:
                self._batch(batch, done, stats, pool, pending)
                while len(pending) > 2 * max(len(batch), 1):  # bounded: memory does not grow with the run
                    self._finish(pending.popleft(), stats)
            while pending:
                self._finish(pending.popleft(), stats)
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True)  # what was started is finished and journaled
            stats.seconds = time.perf_counter() - t0
        return stats

    def _fail(self, item: Item, digest: str | None, reason: str, stats: LoopStats) -> None:
        self.journal.append(failed_record(item, digest, reason))
        stats.failed += 1
        if len(stats.failures) < 5:
            stats.failures.append(reason)
        if self.progress:
            self.progress(1)

    def _encode(self, loaded: list[Loaded], stats: LoopStats) -> list[tuple[Loaded, list[Encoded]]]:
        """Features of a batch at each encoder side; where the batch fails, image by image, recording the ones that
        fail."""
        seg, variant, sides = self.seg, self.request.variant, encoder_sides(self.seg)
        with torch.no_grad(), encoder_precision(seg, self.precision):
            try:
                per_side = [seg.encode([x.image for x in loaded], variant, side) for side in sides]
                return [(x, list(encs)) for x, encs in zip(loaded, zip(*per_side))]
            except (VlfssError, RuntimeError, ValueError) as e:
                log.info("batch failed (%s); encoding its images one by one", e)
            ok = []
            for x in loaded:
                try:
                    ok.append((x, [seg.encode([x.image], variant, side)[0] for side in sides]))
                except (VlfssError, RuntimeError, ValueError) as e:
                    self._fail(self.source.items[x.index], x.digest, f"{self.source.items[x.index].path}: {e}", stats)
            return ok

    def _batch(self, batch: list[Loaded], done: dict[int, str], stats: LoopStats, pool: ThreadPoolExecutor,
               pending: deque[Future]) -> None:
        decoded = []
        for x in batch:
            item = self.source.items[x.index]
            if x.error is not None:
                self._fail(item, x.digest, x.error, stats)
            elif x.unchanged:
                stats.skipped += 1
                if self.progress:
                    self.progress(1)
            else:
                decoded.append(x)
        for x, encs in self._encode(decoded, stats) if decoded else []:
            if done.get(x.index) == x.digest:  # computed only to keep its batch whole
                stats.skipped += 1
                if self.progress:
                    self.progress(1)
                continue
            pending.append(pool.submit(self._score_and_write, self.source.items[x.index], x.digest, x.image, encs))

    def _score_and_write(self, item: Item, digest: str, image: np.ndarray, encs: list[Encoded]) -> None:
        """In a pool thread: the image's logits, its files, then its journal line."""
        logits = image_logits(self.seg, self.request, encs, image)
        self.journal.append(self.writer.write(item, digest, image, logits, self.seg.how_encoded(*image.shape[:2])))

    def _finish(self, fut: Future, stats: LoopStats) -> None:
        try:
            fut.result()
        except OSError as e:
            raise InputError(f"writing the outputs failed ({e.strerror or e}: {getattr(e, 'filename', '') or ''}); "
                             "nothing is half-written: free space (or fix the folder) and rerun the same command "
                             "to continue") from None
        stats.done += 1
        if self.progress:
            self.progress(1)
