"""What one training step sees: the episode plan, the augmented views of the image pool, and the episode tensors.

* **Determinism.** Episode ``slot`` of step ``s`` is planned from ``SeedSequence([seed, s, slot])`` and drawn from
  the sampler as episode ``s * batch_episodes + slot``; nothing depends on global RNG state, the world size or on
  having resumed, so a resumed run reaches the same weights as an uninterrupted one.
* **Frozen features, computed once.** Training draws from a fixed pool: every image of the train classes plus
  ``augment.views`` augmented views of each, made deterministically from (seed, image, view) and encoded once up
  front (``precompute_features``) into a cache sized to hold them all, so the training loop re-encodes nothing. An
  episode image uses one of its views with probability ``augment.prob``. Views apply flip, scale-crop, colour
  jitter and, with their own probabilities, CutMix or Mixup with another pool image (mixing across episodes
  without new images per step; Mixup keeps the dominant mask), then the photo corruptions of ``augment.degrade``
  (lower resolution, blur, JPEG) that make a head robust to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from ..data import augment as A
from ..data.base import SegDataset
from ..data.episodes import Episode, EpisodeSpec, relabel_query
from ..modeling import functional as fn
from ..modeling.types import ClassSpec, Encoded
from ..segmenter import Segmenter
from .config import KINDS, AugmentConfig, TrainConfig

_PLAN_TAG = 0x7EA1  # separates the planning stream from other uses of the seed
_VIEW_TAG = 0xA06  # separates the view stream


# ------------------------------------------------------------------------------------------ episode plan
@dataclass(frozen=True)
class EpisodePlan:
    """What one training episode is: a sampler index, N, K, whether text is given, and a view per image."""

    index: int  # episode index in the N-way sampler
    n_way: int  # classes in the episode
    shots: int  # supports per class; 0: text only
    use_text: bool  # the class names are given
    views: tuple[int, ...]  # 1 + N*K view ids (query first, supports class-major); 0 = the original image

    @property
    def kind(self) -> str:
        return "text" if self.shots == 0 else ("text+shots" if self.use_text else "shots")


def plan_episode(cfg: TrainConfig, step: int, slot: int, has_text: bool = True) -> EpisodePlan:
    """Episode ``slot`` of ``step``: a pure function of (seed, step, slot) and the config."""
    ep, au = cfg.episodes, cfg.augment
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _PLAN_TAG, step, slot]))
    n = int(rng.integers(2, ep.max_way + 1)) if ep.max_way >= 2 and rng.random() < ep.multi_way else 1
    weights = np.array([ep.text_only, ep.shots_only, ep.text_and_shots] if has_text else [0.0, 1.0, 0.0])
    kind = KINDS[int(rng.choice(3, p=weights / weights.sum()))]
    k = 0 if kind == "text" else int(rng.integers(1, ep.max_shots + 1))
    views = []
    for _ in range(1 + n * k):
        use = au.views > 0 and rng.random() < au.prob
        views.append(int(rng.integers(1, au.views + 1)) if use else 0)
    return EpisodePlan(step * cfg.batch_episodes + slot, n, k, kind != "shots", tuple(views))


# ------------------------------------------------------------------------------------------ augmented views
class ViewBank:
    """Deterministic augmented views of a dataset's images: view 0 is the image itself, view v >= 1 a
    function of (seed, image, v) only, so the same view always has the same pixels (and cache key)."""

    def __init__(self, dataset: SegDataset, pool: Sequence[int], aug: AugmentConfig, seed: int) -> None:
        self.dataset, self.pool, self.aug, self.seed = dataset, list(pool), aug, seed

    def view(self, idx: int, v: int) -> tuple[np.ndarray, np.ndarray]:
        """(image H x W x 3 uint8, label map H x W) of view ``v`` of image ``idx``."""
        image, label = self.dataset.load(idx)
        if v == 0:
            return np.require(image, requirements="W"), np.require(label, requirements="W")
        ign = self.dataset.ignore_label
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _VIEW_TAG, idx, v]))
        image, label = A.hflip(image, label, rng, self.aug.hflip)
        h, w = label.shape
        image, label = A.random_scale_crop(image, label, rng, (h, w), (self.aug.scale_min, self.aug.scale_max), ign)
        if self.aug.jitter or self.aug.hue:
            image = A.colour_jitter(image, rng, self.aug.jitter, self.aug.jitter, self.aug.jitter, self.aug.hue)
        r_mix, partner = rng.random(), self.pool[int(rng.integers(len(self.pool)))]
        if partner != idx and r_mix < self.aug.cutmix + self.aug.mixup:
            pimg, plab = self.dataset.load(partner)
            pimg, plab = A.resize_image(pimg, (h, w)), A.resize_mask(plab, (h, w))
            if r_mix < self.aug.cutmix:
                image, label, _ = A.cutmix(image, label, pimg, plab, rng)
            else:
                mixed = A.mixup(image, label, pimg, plab, rng)
                image, label = mixed.image, mixed.mask
        au = self.aug  # last, so views of recipes without these draw the same numbers as before
        image = A.degrade(image, rng, au.blur, au.blur_sigma, au.jpeg, au.jpeg_quality, au.resample, au.resample_min)
        return image, label


def class_mask(label: np.ndarray, c: int, ignore: int) -> np.ndarray:
    """1 where class ``c`` is, 255 where ignored, 0 elsewhere."""
    out = (label == c + 1).astype(np.uint8)
    out[label == ignore] = fn.IGNORE
    return out


def load_planned_episode(bank: ViewBank, spec: EpisodeSpec, plan: EpisodePlan) -> Episode:
    """Load ``spec`` with the plan's view per image; a support whose view lost its object uses the original."""
    ds = bank.dataset
    qi = ds.index_of(spec.query_id)
    qimg, qlab = bank.view(qi, plan.views[0])
    sup_images, sup_masks = [], []
    for j, c in enumerate(spec.class_ids):
        for i, sid in enumerate(spec.supports_of(j)):
            si = ds.index_of(sid)
            v = plan.views[1 + j * spec.k_shot + i]
            img, lab = bank.view(si, v)
            m = class_mask(lab, c, ds.ignore_label)
            if v and not (m == 1).any():
                img, lab = bank.view(si, 0)
                m = class_mask(lab, c, ds.ignore_label)
            sup_images.append(img)
            sup_masks.append(m)
    return Episode(query_image=qimg, query_mask=relabel_query(qlab, spec.class_ids, ds.ignore_label),
                   support_images=sup_images, support_masks=sup_masks, class_ids=list(spec.class_ids),
                   texts=[ds.text_names[c] for c in spec.class_ids], query_id=spec.query_id,
                   support_ids=list(spec.support_ids), n_way=spec.n_way, k_shot=spec.k_shot, index=spec.index)


def pool_views(bank: ViewBank, views: int) -> list[tuple[int, int]]:
    """Every (image, view) pair of the pool."""
    return [(i, v) for i in bank.pool for v in range(views + 1)]


def precompute_features(seg: Segmenter, bank: ViewBank, views: int, variant: str, chunk: int = 64,
                        progress: bool = False) -> int:
    """Encode every view of the pool once (batched); returns the number of images encoded."""
    pairs = pool_views(bank, views)
    before = seg.image_encodes
    for s in tqdm(range(0, len(pairs), chunk), disable=not progress, desc="features", unit="chunk"):
        seg.encode([bank.view(i, v)[0] for i, v in pairs[s:s + chunk]], variant)
    return seg.image_encodes - before


# ------------------------------------------------------------------------------------------ episode tensors
@dataclass
class Prepared:
    """One episode as the head consumes it."""

    query: Encoded  # the query's features
    target: Tensor  # H' x W' long labels 0..N / 255 at encoder input size
    specs: list[ClassSpec]  # text filled in unless it comes from the learned prompt
    class_ids: list[int]  # dataset class ids (rows of the learned prompt)
    use_text: bool  # the episode gives the class names


def _to_device(e: Encoded, device: torch.device) -> Encoded:
    if e.z.device == device and e.rgb.device == device:
        return e
    return Encoded(taps=[t.to(device) for t in e.taps], z=e.z.to(device), rgb=e.rgb.to(device), size=e.size)


def resize_labels(mask: np.ndarray, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of an H x W label map to ``size`` (as Segmenter resizes support masks)."""
    m = torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()
    return F.interpolate(m, size=size, mode="nearest")[0, 0].to(torch.uint8)


def prepare_episode(seg: Segmenter, ep: Episode, use_text: bool, variant: str, device: torch.device,
                    learned_text: bool = False) -> Prepared:
    """Encode (from the cache) and build class specs; text from templates unless ``learned_text``."""
    enc = [_to_device(e, device) for e in seg.encode([ep.query_image, *ep.support_images], variant)]
    q = enc[0]
    size = tuple(q.rgb.shape[-2:])
    target = resize_labels(ep.query_mask, size).long().to(device)
    texts = seg.text_embeddings(ep.texts).to(device) if use_text and not learned_text else None
    specs = []
    for j in range(ep.n_way):
        sup = []
        for i in range(ep.k_shot):
            e = enc[1 + j * ep.k_shot + i]
            sup.append((e, resize_labels(ep.support_masks[j * ep.k_shot + i], tuple(e.rgb.shape[-2:])).to(device)))
        specs.append(ClassSpec(ep.texts[j], texts[j] if texts is not None else None, sup))
    return Prepared(q, target, specs, list(ep.class_ids), use_text)
