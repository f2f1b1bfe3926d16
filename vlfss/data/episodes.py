"""Few-shot episodes: the dataclass every model consumes and a seeded, order-free sampler.

Episode ``i`` of a sampler is a function of ``(seed, i)`` only: its randomness comes from
``np.random.SeedSequence([seed, i])``, split into two independent streams: the first picks the classes and
the query, the second the supports. So the same seed gives the same episodes for any number of processes
and in any order (shard with ``shard(n, rank, world)``), and 0-, 1- and 5-shot runs with the same seed
score identical queries; the K supports of class c are the first K of one seeded permutation, so the
1-shot supports are a subset of the 5-shot ones.

Labels (HSNet's vocabulary): ``query_mask`` is 0 background, 1..N for the episode's N classes in order,
255 ignore (the dataset's other classes become background); ``support_masks`` are binary per support.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, InputError
from .base import IGNORE_LABEL, SegDataset

logger = logging.getLogger(__name__)

EPISODES_FORMAT = "vlfss.data.episodes"
EPISODES_VERSION = 1
QUERY_SAMPLING = ("class", "pair")


@dataclass(frozen=True)
class EpisodeSpec:
    """An episode as ids only (cheap to create, save and shard); ``support_ids`` is class-major, N*K long."""

    index: int
    query_id: str
    class_ids: tuple[int, ...]
    support_ids: tuple[str, ...]
    k_shot: int

    @property
    def n_way(self) -> int:
        return len(self.class_ids)

    def supports_of(self, j: int) -> tuple[str, ...]:
        """The K support ids of the episode's ``j``-th class."""
        return self.support_ids[j * self.k_shot:(j + 1) * self.k_shot]

    def with_shots(self, k: int) -> EpisodeSpec:
        """The same episode with the first ``k`` supports per class (k <= k_shot)."""
        if not 0 <= k <= self.k_shot:
            raise InputError(f"episode {self.index} has {self.k_shot} shots; cannot take {k}")
        sup = tuple(s for j in range(self.n_way) for s in self.supports_of(j)[:k])
        return EpisodeSpec(self.index, self.query_id, self.class_ids, sup, k)

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "query": self.query_id, "classes": list(self.class_ids),
                "supports": [list(self.supports_of(j)) for j in range(self.n_way)]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EpisodeSpec:
        sup = [list(s) for s in d["supports"]]
        k = len(sup[0]) if sup else 0
        if len(sup) != len(d["classes"]) or any(len(s) != k for s in sup):
            raise DataError(f"episode {d.get('index')}: needs one list of K support ids per class")
        return cls(int(d["index"]), str(d["query"]), tuple(int(c) for c in d["classes"]),
                   tuple(str(s) for ss in sup for s in ss), k)


@dataclass
class Episode:
    """One loaded episode: query + N*K supports (class-major) + the class names as texts."""

    query_image: np.ndarray  # H x W x 3 uint8
    query_mask: np.ndarray  # H x W uint8: 0 bg, 1..N episode classes, 255 ignore
    support_images: list[np.ndarray]  # N*K arrays H_s x W_s x 3 uint8, class-major
    support_masks: list[np.ndarray]  # N*K arrays H_s x W_s uint8: 1 its class, 0 other, 255 ignore
    class_ids: list[int]  # dataset 0-based class ids, in episode order
    texts: list[str]  # class names as words (dataset.text_names), in episode order
    query_id: str
    support_ids: list[str]
    n_way: int
    k_shot: int
    index: int = -1
    caption: str | None = field(default=None)  # the query's caption when the dataset has one


def shard(n: int, rank: int, world: int) -> range:
    """The episode indices one of ``world`` processes evaluates: ``range(rank, n, world)``."""
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise InputError(f"world size must be a positive integer, got {world!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
        raise InputError(f"rank must be in 0..{world - 1}, got {rank!r}")
    if n < 0:
        raise InputError(f"number of episodes must be >= 0, got {n}")
    return range(rank, n, world)


def relabel_query(label: np.ndarray, class_ids: Sequence[int], ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """Dataset label map -> episode map: class ``class_ids[j]`` -> j+1, ignore -> 255, anything else -> 0."""
    out = np.zeros(label.shape, np.uint8)
    for j, c in enumerate(class_ids):
        out[label == int(c) + 1] = j + 1
    out[label == ignore_label] = IGNORE_LABEL
    return out


def load_episode(dataset: SegDataset, spec: EpisodeSpec) -> Episode:
    """Read the images and masks of ``spec`` from ``dataset`` and relabel them for the episode."""
    qi = dataset.index_of(spec.query_id)
    image, label = dataset.load(qi)
    sup_images, sup_masks = [], []
    for j, c in enumerate(spec.class_ids):
        for sid in spec.supports_of(j):
            si = dataset.index_of(sid)
            sup_images.append(dataset.load_image(si))
            mask = dataset.load_class_mask(si, c)
            if mask.shape != sup_images[-1].shape[:2]:
                raise DataError(f"{dataset.name}: support {sid!r} image and mask sizes differ")
            sup_masks.append(mask)
    return Episode(
        query_image=image,
        query_mask=relabel_query(label, spec.class_ids, dataset.ignore_label),
        support_images=sup_images,
        support_masks=sup_masks,
        class_ids=list(spec.class_ids),
        texts=[dataset.text_names[c] for c in spec.class_ids],
        query_id=spec.query_id,
        support_ids=list(spec.support_ids),
        n_way=spec.n_way,
        k_shot=spec.k_shot,
        index=spec.index,
        caption=dataset.caption(qi),
    )


class EpisodeSampler:
    """Seeded N-way K-shot episodes over ``classes`` of ``dataset``.

    Query choice (``query_sampling``): ``"class"`` draws a class uniformly, then an image containing it
    (balanced over classes, as HSNet on COCO); ``"pair"`` draws an (image, class) pair uniformly (HSNet on
    PASCAL). For N > 1 the other N-1 classes are those of ``classes`` also present in the query, in random
    order, topped up with random absent classes (negatives). The episode order of classes is then shuffled.
    Supports of class c: K distinct images containing c, never the query. ``k_shot=0`` gives no supports.
    """

    def __init__(
        self,
        dataset: SegDataset,
        classes: Sequence[int],
        n_way: int = 1,
        k_shot: int = 1,
        seed: int = 0,
        num_episodes: int = 1000,
        query_sampling: str = "class",
    ) -> None:
        for nm, v, lo in (("n_way", n_way, 1), ("k_shot", k_shot, 0), ("seed", seed, 0), ("num_episodes",
                                                                                          num_episodes, 0)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise InputError(f"{nm} must be an integer >= {lo}, got {v!r}")
        if query_sampling not in QUERY_SAMPLING:
            raise InputError(f"query_sampling must be one of {list(QUERY_SAMPLING)}, got {query_sampling!r}")
        classes = [int(c) for c in classes]
        if not classes:
            raise InputError("classes is empty; pass the benchmark's novel (or base) class ids")
        if len(set(classes)) != len(classes):
            raise InputError(f"classes has duplicates: {classes}")
        bad = [c for c in classes if not 0 <= c < dataset.num_classes]
        if bad:
            raise InputError(f"class ids {bad} are out of range 0..{dataset.num_classes - 1} for {dataset.name}")
        if n_way > len(classes):
            raise InputError(f"n_way={n_way} but only {len(classes)} classes to draw from")
        self.dataset = dataset
        self.classes = classes
        self.n_way, self.k_shot = int(n_way), int(k_shot)
        self.seed, self.num_episodes = int(seed), int(num_episodes)
        self.query_sampling = query_sampling
        self._images = {c: dataset.images_of_class(c) for c in classes}
        need = self.k_shot + 1
        few = [c for c in classes if len(self._images[c]) < need]
        if few:
            desc = ", ".join(f"{dataset.class_names[c]!r} (id {c}): {len(self._images[c])}" for c in few[:5])
            raise DataError(
                f"{dataset.name}: {len(few)} class(es) have fewer than {need} images, needed for a query plus "
                f"{self.k_shot} support(s): {desc}; drop them from classes or use fewer shots"
            )
        self._class_set = set(classes)
        if query_sampling == "pair":
            self._pair_offsets = np.cumsum([0] + [len(self._images[c]) for c in classes])

    def __len__(self) -> int:
        return self.num_episodes

    def _streams(self, i: int) -> tuple[np.random.Generator, np.random.Generator]:
        q, s = np.random.SeedSequence([self.seed, i]).spawn(2)
        return np.random.default_rng(q), np.random.default_rng(s)

    def spec(self, i: int) -> EpisodeSpec:
        """Episode ``i`` as ids; depends only on (seed, i), the dataset and the classes."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.num_episodes:
            raise InputError(f"episode index must be in 0..{self.num_episodes - 1}, got {i!r}")
        i = int(i)
        rq, rs = self._streams(i)
        if self.query_sampling == "class":
            c0 = self.classes[int(rq.integers(len(self.classes)))]
            q = self._images[c0][int(rq.integers(len(self._images[c0])))]
        else:
            p = int(rq.integers(int(self._pair_offsets[-1])))
            k = int(np.searchsorted(self._pair_offsets, p, side="right")) - 1
            c0 = self.classes[k]
            q = self._images[c0][p - int(self._pair_offsets[k])]
        chosen = [c0]
        if self.n_way > 1:
            present = [c for c in self.dataset.classes_in(q) if c in self._class_set and c != c0]
            absent = [c for c in self.classes if c != c0 and c not in present]
            extra = [present[j] for j in rq.permutation(len(present))]
            extra += [absent[j] for j in rq.permutation(len(absent))]
            chosen += extra[: self.n_way - 1]
            chosen = [chosen[j] for j in rq.permutation(len(chosen))]
        supports: list[str] = []
        if self.k_shot:
            for c in chosen:  # one permutation per class, so fewer shots take a prefix
                cands = [x for x in self._images[c] if x != q]
                order = rs.permutation(len(cands))[: self.k_shot]
                supports += [self.dataset.image_id(cands[j]) for j in order]
        return EpisodeSpec(i, self.dataset.image_id(q), tuple(chosen), tuple(supports), self.k_shot)

    def specs(self, indices: Sequence[int] | range | None = None) -> list[EpisodeSpec]:
        """Specs of ``indices`` (default: all episodes)."""
        return [self.spec(i) for i in (range(self.num_episodes) if indices is None else indices)]

    def episode(self, i: int | EpisodeSpec) -> Episode:
        """Episode ``i`` (or a saved spec) loaded from the dataset."""
        return load_episode(self.dataset, i if isinstance(i, EpisodeSpec) else self.spec(i))

    def __iter__(self) -> Iterator[Episode]:
        return (self.episode(i) for i in range(self.num_episodes))


# ------------------------------------------------------------------------------------------ episode files
def _digest(meta: dict[str, Any], episodes: list[dict[str, Any]]) -> str:
    blob = json.dumps({"meta": meta, "episodes": episodes}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def save_episodes(path: str | Path, specs: Sequence[EpisodeSpec], meta: dict[str, Any]) -> str:
    """Write ``specs`` as JSON with ``meta`` (must name ``benchmark``; ``fold``, seed, ...) and a content hash.

    ``shots`` and ``n_way`` are filled in from the specs. Returns the hash. Written atomically.
    """
    from ..io_utils import atomic_write_text

    if not isinstance(meta, dict) or not isinstance(meta.get("benchmark"), str):
        raise InputError("meta must be a dict with at least a 'benchmark' name, e.g. {'benchmark': 'pascal5i', "
                         "'fold': 0, 'seed': 0}")
    specs = list(specs)
    shots = {s.k_shot for s in specs}
    ways = {s.n_way for s in specs}
    if len(shots) > 1 or len(ways) > 1:
        raise InputError(f"all episodes in one file must share shots and ways, got shots {shots} ways {ways}")
    meta = dict(meta)
    meta.setdefault("shots", shots.pop() if shots else 0)
    meta.setdefault("n_way", ways.pop() if ways else 1)
    episodes = [s.to_json() for s in specs]
    try:
        json.dumps(meta)
    except TypeError as e:
        raise InputError(f"meta must be JSON-serialisable: {e}") from None
    h = _digest(meta, episodes)
    doc = {"format": EPISODES_FORMAT, "version": EPISODES_VERSION, "hash": h, "meta": meta, "episodes": episodes}
    atomic_write_text(path, json.dumps(doc, indent=None, separators=(",", ":")) + "\n")
    return h


def load_episodes(
    path: str | Path,
    benchmark: str | None = None,
    fold: int | None = None,
    shots: int | None = None,
) -> tuple[list[EpisodeSpec], dict[str, Any]]:
    """Read an episodes file; check its hash and, when given, that it is for ``benchmark`` and ``fold``.

    ``shots`` below the file's shots takes the first ``shots`` supports per class (the nested property);
    more shots than saved is an error. Returns (specs, meta) with ``meta["hash"]`` set.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise DataError(f"episodes file {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise DataError(f"episodes file {path} is not readable JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != EPISODES_FORMAT:
        raise DataError(f"{path} is not a vlfss episodes file (no format={EPISODES_FORMAT!r})")
    if doc.get("version") != EPISODES_VERSION:
        raise DataError(f"episodes file {path} has version {doc.get('version')}; this vlfss reads {EPISODES_VERSION}")
    meta, episodes = doc.get("meta", {}), doc.get("episodes", [])
    if _digest(meta, episodes) != doc.get("hash"):
        raise DataError(f"episodes file {path} does not match its content hash: it was edited or is truncated; "
                        "regenerate it")
    if benchmark is not None and meta.get("benchmark") != benchmark:
        raise DataError(f"episodes file {path} is for benchmark {meta.get('benchmark')!r}, not {benchmark!r}")
    if fold is not None and meta.get("fold") != fold:
        raise DataError(f"episodes file {path} is for fold {meta.get('fold')!r}, not {fold!r}")
    try:
        specs = [EpisodeSpec.from_json(e) for e in episodes]
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise DataError(f"episodes file {path} has a malformed episode: {e}") from None
    if shots is not None:
        have = int(meta.get("shots", 0))
        if shots > have:
            raise DataError(f"episodes file {path} has {have} shot(s) per class; cannot serve {shots}")
        specs = [s.with_shots(shots) for s in specs]
    meta = dict(meta, hash=doc["hash"])
    return specs, meta
