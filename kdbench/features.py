"""Feature taps through timm's own feature contract, stage matching, and adapters.

Taps. Every timm model that supports ``forward_intermediates`` (ResNets, ConvNeXts, EfficientNets, MobileNets,
ViTs, Swins and kdbench's CIFAR zoo) exposes its stage outputs the same way, so a feature method written once
works on any pair. A *stage* is one entry of the model's ``feature_info``; :func:`describe_model` measures each
stage's map at the run's input size, :func:`forward_with_features` returns the logits and the requested maps from
one forward pass. ViT token features come back as NCHW maps with the prefix (class, register) tokens dropped.

Stage matching. Teacher and student rarely have the same number of stages (a ResNet has 5: stem and 4 layers; a
ConvNeXt 4; a ViT one per block). Stage ``i`` of a model with ``n`` stages has the *relative depth*
``i / (n - 1)``: the first stage is at 0, the last at 1. A method names its stages by relative depth, so one
setting fits every pair; a depth picks the stage of nearest relative depth, a tie going to the deeper stage (0.5
picks stage 2 of 5, stage 2 of 4, block 6 of 12). Methods may also take explicit stage indices (negative ones
count from the last stage), which win over the depth for that model. Helpers: :func:`stage_at_depth`,
:func:`select_stage`, :func:`select_stages`, :func:`shared_depths`.

Adapters. :class:`FeatureAdapter` maps a student stage's map onto a teacher stage's shape (1x1 conv + BN for
the channels, pooling or bilinear interpolation for the size); :func:`resize_map` and
:func:`pool_to_common_size` are the spatial parts on their own. Adapters belong to the method, so they train
with the student, count in ``extra_params_m`` and never ship with it.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.errors import ConfigError, ModelError


@dataclass(frozen=True)
class StageShape:
    """Shape of one stage output for one sample at the run's input size.

    Attributes:
        channels: feature channels (``feature_info[i]["num_chs"]``).
        height: spatial height of the map (tokens are reshaped to a map).
        width: spatial width of the map.
        reduction: the stage's stride relative to the input (``feature_info[i]["reduction"]``).
    """

    channels: int
    height: int
    width: int
    reduction: int


@dataclass(frozen=True)
class ModelInfo:
    """What a method may know about a model before training: never the module itself.

    Attributes:
        name: the timm model name.
        num_classes: classifier outputs.
        num_features: width of the pre-logits features.
        stages: the shape of each ``forward_intermediates`` output, or ``()`` when the model has no feature taps.
        embedding_dim: width of the pre-logits embedding ``forward_head(x, pre_logits=True)`` as measured at the
            run's input size (``num_features`` when not measured).
    """

    name: str
    num_classes: int
    num_features: int
    stages: tuple[StageShape, ...]
    embedding_dim: int = 0

    def __post_init__(self) -> None:
        if not self.embedding_dim:
            object.__setattr__(self, "embedding_dim", self.num_features)

    @property
    def num_stages(self) -> int:
        """Number of feature stages (``len(feature_info)``); 0 without feature taps."""
        return len(self.stages)

    @property
    def supports_features(self) -> bool:
        """Whether the model exposes stage features through ``forward_intermediates``."""
        return bool(self.stages)

    def require_features(self, method: str) -> None:
        """Raise a one-line :class:`ModelError` if ``method`` cannot tap this model's features."""
        if not self.supports_features:
            raise ModelError(f"model {self.name!r} does not support timm's forward_intermediates/feature_info, "
                             f"which method {method!r} needs; choose a model that does (see the README)")


def has_feature_taps(model: nn.Module) -> bool:
    """Whether ``model`` implements ``forward_intermediates`` and ``feature_info``."""
    return callable(getattr(model, "forward_intermediates", None)) and bool(getattr(model, "feature_info", None))


def describe_model(model: nn.Module, name: str, in_chans: int, image_size: int) -> ModelInfo:
    """Measure the stage shapes of ``model`` with one batch-1 forward pass at the run's input size."""
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    num_features = int(getattr(model, "num_features", 0) or 0)
    stages: tuple[StageShape, ...] = ()
    if has_feature_taps(model):
        was_training = model.training
        model.eval()
        try:
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            with torch.no_grad():
                maps = model.forward_intermediates(torch.zeros(1, in_chans, image_size, image_size, device=device),
                                                   intermediates_only=True)
        except (NotImplementedError, TypeError, ValueError, AssertionError, RuntimeError):
            maps = []
        finally:
            model.train(was_training)
        info = list(model.feature_info)
        if _maps_match_feature_info(maps, info):
            stages = tuple(StageShape(int(m.shape[1]), int(m.shape[2]), int(m.shape[3]), int(f["reduction"]))
                           for m, f in zip(maps, info, strict=True))
    return ModelInfo(name=name, num_classes=num_classes, num_features=num_features, stages=stages,
                     embedding_dim=_embedding_dim(model, in_chans, image_size) or num_features)


def _embedding_dim(model: nn.Module, in_chans: int, image_size: int) -> int:
    """Width of ``forward_head(forward_features(x), pre_logits=True)`` at the run's input size; 0 if unknown."""
    if not (callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None))):
        return 0
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            x = torch.zeros(1, in_chans, image_size, image_size, device=device)
            embedding = model.forward_head(model.forward_features(x), pre_logits=True)
        return int(embedding.reshape(1, -1).shape[1])
    except (NotImplementedError, TypeError, ValueError, AssertionError, RuntimeError):
        return 0
    finally:
        model.train(was_training)


def _maps_match_feature_info(maps: Sequence[Tensor], info: Sequence[dict]) -> bool:
    """Whether ``forward_intermediates`` gave one NCHW map per ``feature_info`` entry, with its channels."""
    return bool(maps) and len(maps) == len(info) and all(
        m.ndim == 4 and int(m.shape[1]) == int(f["num_chs"]) for m, f in zip(maps, info, strict=True))


@dataclass
class Outputs:
    """What one forward pass of a model gives a method.

    Attributes:
        logits: the logits (the first head's, when the model returns several).
        heads: every head's logits: ``(logits,)``, or e.g. a distilled DeiT's (class token, distillation token)
            in training mode.
        features: stage index -> NCHW map, for the stages asked for.
        embedding: the pre-logits embedding ``forward_head(x, pre_logits=True)`` as (B, D), when asked for.
        final_map: the final feature map before pooling as NCHW (:func:`final_feature_map`), when asked for.
    """

    logits: Tensor
    heads: tuple[Tensor, ...]
    features: dict[int, Tensor]
    embedding: Tensor | None = None
    final_map: Tensor | None = None


def forward_outputs(model: nn.Module, images: Tensor, stages: Sequence[int], embedding: bool = False,
                    final_map: bool = False) -> Outputs:
    """One forward pass: the logits, every head, the requested stage maps and, if asked, embedding and final map.

    The embedding is timm's pre-logits feature: ``forward_head(features, pre_logits=True)`` (the pooled feature
    of a CNN; the class token or the pooled tokens of a ViT, as the model's own head does), computed from the same
    final features as the logits, so both belong to one pass; so is the final map (:func:`final_feature_map`).
    """
    feats: dict[int, Tensor] = {}
    if stages:
        ordered = sorted(set(stages))
        final, maps = model.forward_intermediates(images, indices=ordered, **_full_pass_options(type(model)))
        feats = dict(zip(ordered, maps, strict=True))
    elif embedding or final_map:
        final = model.forward_features(images)
    else:
        out = model(images)
        heads = tuple(out) if isinstance(out, tuple | list) else (out,)
        return Outputs(heads[0], heads, feats)
    out = model.forward_head(final)
    heads = tuple(out) if isinstance(out, tuple | list) else (out,)
    pooled = None
    if embedding:
        pooled = model.forward_head(final, pre_logits=True)
        pooled = pooled.reshape(pooled.shape[0], -1)
    return Outputs(heads[0], heads, feats, pooled, final_feature_map(model, final) if final_map else None)


def final_feature_map(model: nn.Module, final: Tensor) -> Tensor:
    """The model's final features before pooling (``forward_features``' output) as an NCHW map.

    A CNN's map is returned as it is (NHWC models, ``output_fmt == "NHWC"`` as Swin's, are permuted); a ViT's
    tokens lose their prefix (class, register) tokens and the rest is laid out on the patch grid, as the stage taps
    do.

    Raises:
        ModelError: tokens that do not fill a grid (a pooled or a non-square token layout), or another shape.
    """
    if final.ndim == 4:
        return final.permute(0, 3, 1, 2) if getattr(model, "output_fmt", "NCHW") == "NHWC" else final
    if final.ndim == 3:
        tokens = final[:, int(getattr(model, "num_prefix_tokens", 0) or 0):]
        count = tokens.shape[1]
        grid = tuple(getattr(getattr(model, "patch_embed", None), "grid_size", None) or ())
        if len(grid) != 2 or grid[0] * grid[1] != count:
            side = math.isqrt(count)
            grid = (side, side)
        if grid[0] * grid[1] != count or count == 0:
            raise ModelError(f"{type(model).__name__}'s final features are {count} tokens, which form no grid: the "
                             "method needs a final feature map (choose a CNN or a ViT with a patch grid)")
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], int(grid[0]), int(grid[1]))
    raise ModelError(f"{type(model).__name__}'s final features have shape {tuple(final.shape)}, not a map or "
                     "tokens: the method needs a final feature map")


def classifier_of(model: nn.Module, info: ModelInfo, method: str, role: str) -> nn.Linear:
    """The model's classifier (timm's ``get_classifier()``) when it is one Linear over the pooled final map.

    Args:
        model: a timm model.
        info: its description (``num_features``: the channels of its final map).
        method: the method's name, for the message.
        role: ``"student"`` or ``"teacher"``, for the message.

    Raises:
        ModelError: the classifier is missing, not one ``nn.Linear``, or reads another width than the final map's
            channels (a head with layers of its own between the pooling and the classifier, as MobileNetV3's).
    """
    get = getattr(model, "get_classifier", None)
    classifier = get() if callable(get) else None
    if not isinstance(classifier, nn.Linear) or classifier.in_features != info.num_features:
        raise ModelError(f"method {method!r} needs the {role}'s classifier as one Linear over its pooled final map, "
                         f"which {info.name!r} does not have (its get_classifier() is "
                         f"{type(classifier).__name__}); choose another {role}")
    return classifier


def forward_with_features(model: nn.Module, images: Tensor, stages: Sequence[int]) -> tuple[Tensor, dict[int, Tensor]]:
    """One forward pass that yields the logits and the requested stage features.

    Args:
        model: a timm model.
        images: a batch of inputs.
        stages: indices into the model's stages (``feature_info``); empty for logits only.

    Returns:
        ``(logits, {stage index: NCHW feature map})``.

    The pass runs to the end whatever the stages (``stop_early=False``: Hiera's default would stop at the
    deepest requested stage) and asks for NCHW maps, where the model's ``forward_intermediates`` takes those
    arguments.
    """
    if not stages:
        return model(images), {}
    ordered = sorted(set(stages))
    final, maps = model.forward_intermediates(images, indices=ordered, **_full_pass_options(type(model)))
    return model.forward_head(final), dict(zip(ordered, maps, strict=True))


@functools.cache
def _full_pass_options(model_cls: type) -> dict[str, object]:
    """``stop_early=False`` and ``output_fmt="NCHW"``, for those that ``model_cls.forward_intermediates`` accepts."""
    try:
        accepted = inspect.signature(model_cls.forward_intermediates).parameters
    except (TypeError, ValueError):
        return {}
    wanted = {"stop_early": False, "output_fmt": "NCHW"}
    return {name: value for name, value in wanted.items() if name in accepted}


# ---------------------------------------------------------------------------------------------------------------
# Stage matching


def relative_depth(index: int, num_stages: int) -> float:
    """Relative depth ``index / (num_stages - 1)`` of a stage: 0 for the first, 1 for the last (and a lone) one."""
    return index / (num_stages - 1) if num_stages > 1 else 1.0


def stage_at_depth(depth: float, num_stages: int) -> int:
    """Index of the stage of nearest relative depth to ``depth``; a tie goes to the deeper stage.

    Raises:
        ConfigError: ``depth`` outside [0, 1], or no stages.
    """
    if not 0.0 <= depth <= 1.0:
        raise ConfigError(f"a relative stage depth must be in [0, 1] (got {depth})")
    if num_stages < 1:
        raise ConfigError("a model without stages has no stage at any depth")
    return min(num_stages - 1, math.floor(depth * (num_stages - 1) + 0.5 + 1e-9))


def select_stage(info: ModelInfo, depth: float, index: int | None = None, *, what: str = "stage") -> int:
    """The stage of ``info`` a method asked for.

    ``index`` when given (negative counts from the end), else the stage of nearest relative ``depth``.

    Args:
        info: the model.
        depth: relative depth in [0, 1].
        index: an explicit stage index, or ``None``.
        what: the parameter's name for error messages, e.g. ``"fitnets.student_stage"``.

    Raises:
        ConfigError: ``index`` out of range for this model (the message names the model and its stage count).
    """
    n = info.num_stages
    if index is None:
        return stage_at_depth(depth, n)
    if not -n <= index < n:
        raise ConfigError(f"{what}={index} is out of range for {info.name!r}, which has {n} stages "
                          f"(0..{n - 1}, or -{n}..-1 from the end)")
    return index % n


def select_stages(info: ModelInfo, depths: Sequence[float], indices: Sequence[int] | None = None, *,
                  what: str = "stages") -> tuple[int, ...]:
    """Several stages of ``info``: the explicit ``indices`` when given, else one per relative depth in ``depths``."""
    if indices is not None:
        return tuple(select_stage(info, 0.0, i, what=what) for i in indices)
    return tuple(stage_at_depth(d, info.num_stages) for d in depths)


def shared_depths(student: ModelInfo, teacher: ModelInfo, *, skip_first: bool = True) -> tuple[float, ...]:
    """The default relative depths at which to pair the stages of two models.

    They are the depths of the stages of the model with fewer stages (each of its stages used once, each paired
    with the other model's stage of nearest depth), leaving out its first stage (the stem of a ResNet or a
    MobileNet, the first block of a ViT) when ``skip_first``.
    """
    n = min(student.num_stages, teacher.num_stages)
    return tuple(relative_depth(i, n) for i in range(1 if skip_first else 0, n))


# ---------------------------------------------------------------------------------------------------------------
# Spatial alignment and adapters


def resize_map(feature: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize an NCHW map to ``size`` (height, width); unchanged when it already fits.

    Adaptive average pooling when the map is at least as large on both sides, bilinear interpolation
    (``align_corners=False``) otherwise (smaller, or larger on one side and smaller on the other). Pooling down
    averages each output cell's input window, which is what a larger stride computes; interpolation up spreads
    each cell smoothly over the finer grid instead of repeating it in blocks.
    """
    height, width = feature.shape[-2:]
    if (height, width) == tuple(size):
        return feature
    if height >= size[0] and width >= size[1]:
        return F.adaptive_avg_pool2d(feature, size)
    return F.interpolate(feature, size=size, mode="bilinear", align_corners=False)


def pool_to_common_size(first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two NCHW maps down to the smaller's height and width (each side separately)."""
    size = (min(first.shape[-2], second.shape[-2]), min(first.shape[-1], second.shape[-1]))
    return resize_map(first, size), resize_map(second, size)


class FeatureAdapter(nn.Module):
    """Maps a student stage's feature map onto a teacher stage's shape; owned and trained by the method.

    Channels: a 1x1 convolution (no bias) followed by BatchNorm, when ``project`` (by default: when the channel
    counts differ). Size: the student map is resized to the teacher map's height and width with
    :func:`resize_map` (average pooling down, bilinear interpolation up) -- the student side moves, so the
    teacher's map stays the untouched target, as with the regressor of the FitNets paper and the CRD code. Pooling
    runs before the convolution and interpolation after it, so the convolution always works at the smaller size.

    Args:
        student: the student stage's shape at the run's input size.
        teacher: the teacher stage's shape at the run's input size.
        project: add the 1x1 conv + BN; ``None`` adds it only when the channel counts differ.
    """

    def __init__(self, student: StageShape, teacher: StageShape, project: bool | None = None) -> None:
        super().__init__()
        if project is None:
            project = student.channels != teacher.channels
        self.size = (teacher.height, teacher.width)
        self.proj: nn.Module = (nn.Sequential(nn.Conv2d(student.channels, teacher.channels, 1, bias=False),
                                              nn.BatchNorm2d(teacher.channels)) if project else nn.Identity())

    def forward(self, feature: Tensor) -> Tensor:
        """The student map in the teacher map's shape (N, teacher channels, teacher height, teacher width)."""
        height, width = feature.shape[-2:]
        if height >= self.size[0] and width >= self.size[1]:
            return self.proj(resize_map(feature, self.size))
        return resize_map(self.proj(feature), self.size)


# ---------------------------------------------------------------------------------------------------------------
# Stage pairs of multi-stage methods


@dataclass(frozen=True)
class StagePairs:
    """Matched (student stage, teacher stage) pairs of a multi-stage method, in order.

    Attributes:
        pairs: ``((student index, teacher index), ...)``.
    """

    pairs: tuple[tuple[int, int], ...]

    @property
    def student(self) -> tuple[int, ...]:
        """The distinct student stages, sorted: the method's ``student_stages``."""
        return tuple(sorted({s for s, _ in self.pairs}))

    @property
    def teacher(self) -> tuple[int, ...]:
        """The distinct teacher stages, sorted: the method's ``teacher_stages``."""
        return tuple(sorted({t for _, t in self.pairs}))


def match_stages(student: ModelInfo, teacher: ModelInfo, method: str, depths: Sequence[float] | None = None,
                 student_indices: Sequence[int] | None = None, teacher_indices: Sequence[int] | None = None, *,
                 skip_first: bool = True, at_least: int = 1) -> StagePairs:
    """The stage pairs of a multi-stage method: explicit indices, else relative depths, else :func:`shared_depths`.

    Args:
        student: the student (it must have feature taps).
        teacher: the teacher (likewise).
        method: the method's name, for messages.
        depths: relative depths in [0, 1] used in both models; ``None`` for the default pairing.
        student_indices: explicit student stages (negative: from the end); win over ``depths``.
        teacher_indices: explicit teacher stages; win over ``depths``.
        skip_first: whether the default pairing leaves out the first stage.
        at_least: the fewest pairs the method needs.

    Raises:
        ModelError: a model without feature taps.
        ConfigError: an index out of range, or not as many student as teacher stages (or fewer than ``at_least``).
    """
    student.require_features(method)
    teacher.require_features(method)
    if depths is None:
        depths = shared_depths(student, teacher, skip_first=skip_first)
    s = select_stages(student, depths, student_indices, what=f"{method}.student_indices")
    t = select_stages(teacher, depths, teacher_indices, what=f"{method}.teacher_indices")
    if len(s) != len(t) or len(s) < at_least:
        raise ConfigError(f"{method} pairs {len(s)} student stage(s) with {len(t)} teacher stage(s); give as many "
                          f"of each (at least {at_least}) through depths, student_indices, teacher_indices")
    return StagePairs(tuple(zip(s, t, strict=True)))
