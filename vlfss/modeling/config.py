"""What the segmenter computes: its config and its parts' (training-free scoring, the learned head).

Plain dataclasses with no torch import, so the CLI reads its defaults from here cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

INPUT_KINDS = ("text", "shots", "text+shots")  # what a class is given as: a name, examples, or both
Mode = Literal["auto", "training-free", "learned"]
Inference = Literal["auto", "resize", "slide", "multiscale"]
INFERENCES: tuple[str, ...] = get_args(Inference)
Refine = Literal["none", "pamr", "pamr-area"]
Symmetry = Literal["none", "flip", "d8"]  # the grid symmetries vlfss.modeling.symmetry averages over
SYMMETRIES: tuple[str, ...] = get_args(Symmetry)
REFINES: tuple[str, ...] = ("none", "pamr", "pamr-area")


@dataclass(frozen=True)
class ModelDefaults:
    """A model's own defaults, data on its registry entry (like timm's ``pretrained_cfg``). The segmenter's
    ``None`` fields (``variant``, ``templates``, ``refine``, ``slide_short_side``, ``training_free.proto_features``)
    resolve to these, in one place: ``Segmenter.__init__``."""

    variant: str = "clearclip"  # dense last-block variant giving text-aligned patch embeddings (real CLIP weights)
    templates: str = "default"  # template set its class names are wrapped in
    proto_features: str = "z"  # features prototypes match on: "z" (text-aligned) or "tap<i>" (encoder tap i)
    refine: str = "none"  # mask refinement (SegmenterConfig.refine) where it was measured to pay, else none
    # slide: the short side is resized to this many windows first (SegmenterConfig.slide_short_side), as SCLIP,
    # ClearCLIP and ProxyCLIP evaluate (336 px for 224-px windows); None: native pixels (a world drawn at them)
    slide_short_windows: float | None = 1.5


@dataclass
class TrainingFreeConfig:
    """How similarity maps become log-odds in training-free mode (and in the learned head's prior)."""

    text_weight: float = 1.0  # weight of the text log-odds when examples are given too
    proto_weight: float = 1.0  # weight of the prototype log-odds
    text_scale: float | None = None  # cosine -> logit multiplier for text; None: the model's logit scale
    text_threshold: float | None = None  # background cosine for text; None: -bias/scale (SigLIP) or bg prompts
    background_prompts: list[str] = field(default_factory=lambda: ["background", "a plain background"])
    proto_temperature: float = 0.05  # metric "cosine": log-odds = (cos_fg - cos_bg) / proto_temperature
    num_prototypes: int = 1  # >1: k-means foreground prototypes over the support foreground (1: the shots' mean)
    num_bg_prototypes: int = 1  # >1: k-means background prototypes per support (1: the masked mean)
    calibrate_text: bool = True  # text+examples: fit the text log-odds on the supports and add its evidence
    calibration_l2: float = 1e-2  # ridge penalty of that fit (on the standardised cosine)
    proto_features: str | None = None  # what prototypes match on: "z" (text-aligned), "tap<i>" (encoder tap i);
    # None: the model's default (mid-level taps generalise to novel classes better, as in PFENet/HSNet)
    metric: Literal["cosine", "mahalanobis"] = "mahalanobis"  # how query cells compare to prototypes: cosine / T,
    # or the Gaussian log-likelihood ratio under the supports' pooled, shrunk covariance (LDA; Simple CNAPS)
    shrinkage: float = 0.9  # mahalanobis: weight of the scaled identity in the covariance (chosen on the val split)
    mahalanobis_scale: float = 0.1  # mahalanobis: log-odds = scale * Gaussian log-likelihood ratio, which counts
    # C correlated channels as independent evidence and is far too sure (chosen on the val split, text+examples)


@dataclass
class HeadConfig:
    """The learned head: its size, which input kinds it answers and how, and the training-free prior it corrects."""

    dim: int = 64  # token width inside the fusion module
    heads: int = 4  # attention heads
    layers: int = 2  # cross-attention layers
    hidden: int = 64  # decoder channels
    max_support_cells: int = 256  # support foreground cells kept as keys per class (strided if more)
    residual_prior: bool = True  # the decoder's output is added to the training-free log-odds (it learns a correction)
    use_for: list[str] = field(default_factory=lambda: list(INPUT_KINDS))  # input kinds (text, shots, text+shots)
    # the head answers; for the others learned mode returns the training-free log-odds (training sets this to the
    # kinds where the head beat the training-free model on validation, with TrainConfig.fallback_to_training_free)
    prior_input: bool = True  # the decoder also reads the prior's log-odds, so its correction can depend on them
    agnostic_kinds: list[str] = field(default_factory=lambda: ["shots", "text+shots"])  # input kinds the head
    # sees only through similarity maps and the prior (no raw features: the fused tokens and encoder skips are zero
    # for them), so what it learns on base classes is class-agnostic and carries over to novel ones (HSNet, PFENet)
    prior: TrainingFreeConfig = field(default_factory=TrainingFreeConfig)  # the training-free model whose log-odds
    # the head corrects, fixed when the head is built (new_head resolves proto_features None to the model's default,
    # text_scale / text_threshold / background_prompts to the text buffers) and saved with it; independent of the
    # segmenter's own training_free settings


@dataclass
class SegmenterConfig:
    """Everything that decides what the segmenter computes."""

    model: str = "vlfss-tiny"  # backbone name (see `vlfss models`)
    pretrained: str | None = None  # open_clip tag or local weights file; None: the model's default
    cache_dir: str | None = None  # where hub downloads go (open_clip / transformers)
    device: str = "cpu"
    mode: Mode = "auto"  # auto: learned when head weights exist, else training-free
    head_path: str | None = None  # learned head (safetensors); None: the one shipped for the model, if any
    variant: str | None = None  # last-block variant for text-aligned features; None: the model's default
    templates: str | None = None  # template set (prompts/templates/<name>.txt) or a file; None: the model's default
    input_size: int | None = None  # encoder long side in pixels; None: the model's native size
    inference: Inference = "auto"  # resize: the whole image to the encoder's input; slide: encoder-size windows
    # with overlap, features stitched into one grid; multiscale: logits averaged over `scales`; auto: slide when the
    # long side is at least `auto_slide_factor` x input_size (or windows when input_size is unset), else resize
    window: int | None = None  # slide: window side in pixels; None: the encoder's input size
    stride: int | None = None  # slide: window stride in pixels; None: 2/3 of the window (rounded to the patch)
    slide_short_side: int | None = None  # slide: resize the short side to this many pixels first; 0: native
    # pixels; None: the model's default (real CLIPs: 1.5 windows, SCLIP's 336 px for 224-px windows; vlfss-tiny: 0)
    auto_slide_factor: float = 2.0  # auto: slide when the long side >= this many windows
    scales: list[float] = field(default_factory=lambda: [0.75, 1.0, 1.5])  # multiscale: input sizes x these
    refine: Refine | None = None  # mask refinement on the image at its original size:
    # pamr propagates probabilities along similar colours (PAMR); pamr-area then keeps each class's pixel count from
    # before the refinement, so an under-confident mask is moved, not eroded; none: the patch-level logits upsampled;
    # None: the model's default (vlfss-tiny: pamr-area, +3.6..+7.8 mIoU in every cell of the 1000-episode table,
    # docs/inference.md "Mask refinement"; models where it was not measured: none)
    refine_iterations: int = 10  # pamr: propagation steps
    refine_dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 12, 24])  # pamr: neighbourhood rings
    refine_max_side: int = 512  # pamr: larger images are refined at this long side and the result upsampled
    adapt_validate: bool = True  # test-time adaptation (adapt_steps > 0) only when leave-one-out validation on the
    # supports says it helps, with the step count it picks (1 support per class: declined); False: always adapt
    adapt_lr: float = 1e-4  # test-time adaptation learning rate (Adam)
    calibrate: Literal["none", "supports"] = "supports"  # supports: with >= 2 supports per class, leave-one-out on
    # the supports sets each class's threshold (a log-odds offset, shrunk by calibrate_shrink) and picks the
    # refinement among calibrate_refine; 1 support: nothing changes. Learned 5-shot +5.0 / +5.9 mIoU on the synthetic
    # benchmark (docs/inference.md "Calibration on the supports"); costs K scorings of the supports per request
    calibrate_shrink: float = 0.5  # the fraction of the held-out supports' best offset that is applied (0..1)
    calibrate_refine: list[str] = field(default_factory=lambda: ["pamr", "pamr-area"])  # refinements the supports
    # may choose between, when `refine` is one of them (otherwise `refine` stays)
    robust_fallback: bool = True  # models that ship a robust image tower and a quality gate (vlfss-tiny): images the
    # gate finds degraded (blur, JPEG, resampling) are encoded by the robust tower instead; sharp images keep the
    # sharp tower's features exactly (docs/tiny-clip.md "The quality gate"). Other models have neither: no effect
    deblur: bool = True  # with robust_fallback: an image the gate flags is deblurred (Wiener) before the robust tower
    # encodes it when the model's restorer finds it blurred, upsampled or downsampled (it picks the sigma; JPEG: the
    # restorer's own response, none for vlfss-tiny's); false: flagged images are encoded as they are
    robust_symmetry: Symmetry = "d8"  # with robust_fallback: the robust tower's features of a flagged image are
    # averaged over its eight turns and mirrors (d8, 8 encodes in one batch; measured best on the val split), its
    # mirror (flip, 2) or not at all (none); sharp images are untouched (docs/tiny-clip.md "Averaging over turns")
    robust_heads: bool = True  # learned mode with robust_fallback: a query the robust tower encoded is scored with
    # that tower's own head where the model pairs one with the loaded head (the shipped heads: head-vlfss-tiny* ->
    # head-vlfss-tiny-robust*); false: the loaded head scores every query
    autocast_bf16: bool = False  # run the encoder under bfloat16 autocast (fast only on CPUs with bf16 units)
    feature_cache_items: int = 256  # in-memory feature cache size
    feature_cache_dir: str | None = None  # optional on-disk feature cache
    training_free: TrainingFreeConfig = field(default_factory=TrainingFreeConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
