"""Model creation: any ``timm.create_model`` name, built for a dataset's channels, classes and image size."""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from kdbench.errors import ModelError


def check_model_name(name: str) -> None:
    """Raise a one-line :class:`ModelError` if ``name`` is not a timm (or kdbench zoo) model."""
    if name in timm.list_models():
        return
    if timm.is_model(name):
        return
    import difflib

    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "see `kdbench list models PATTERN`"
    raise ModelError(f"unknown model {name!r}; {hint}")


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int,
    image_size: int,
    pretrained: bool = False,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
) -> nn.Module:
    """Create a timm model for a dataset and check that it can run at the dataset's image size.

    Args:
        name: a ``timm.create_model`` name (kdbench's CIFAR zoo included).
        num_classes: number of output classes.
        in_chans: number of input channels.
        image_size: side of the square inputs; ViT-style models get it as ``img_size``.
        pretrained: load timm's pretrained weights (from its hub, unless the overlay names a file).
        pretrained_cfg_overlay: entries over timm's pretrained config, e.g. ``{"file": path}`` to load the weights
            from a local file through timm's own loading code.

    Raises:
        ModelError: unknown name, weights that cannot be fetched, or an input size the model cannot process.
    """
    check_model_name(name)
    kwargs: dict[str, object] = {"num_classes": num_classes, "in_chans": in_chans}
    if pretrained_cfg_overlay:
        kwargs["pretrained_cfg_overlay"] = dict(pretrained_cfg_overlay)
    try:
        try:  # token models (ViT, Swin, MaxViT, ...) are built for the input size; CNNs reject the keyword
            model = timm.create_model(name, pretrained=pretrained, img_size=image_size, **kwargs)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError) as err:
        if pretrained:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(f"cannot load pretrained weights for {name!r} ({first}); "
                             "use --teacher-ckpt PATH where the weight hub is out of reach") from None
        raise ModelError(f"cannot create model {name!r}: {err}") from None
    except (TypeError, ValueError, AssertionError) as err:
        raise ModelError(f"cannot create model {name!r} for {image_size}x{image_size} inputs: {err}") from None
    check_input_size(model, name, in_chans, image_size)
    return model


def check_input_size(model: nn.Module, name: str, in_chans: int, image_size: int) -> None:
    """Run one tiny forward pass at the target size; a model too deep for it fails with a one-line hint."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, image_size, image_size))
    except (RuntimeError, AssertionError, ValueError, MemoryError) as err:
        if isinstance(err, MemoryError | torch.cuda.OutOfMemoryError) or "allocate" in str(err):
            raise ModelError(f"image size {image_size} is too large: one {image_size}x{image_size} input to {name!r} "
                             "needs more memory than there is; pass a smaller --image-size") from None
        reduction = max((int(f["reduction"]) for f in getattr(model, "feature_info", []) or []), default=None)
        need = f" (its total stride is {reduction})" if reduction else ""
        raise ModelError(f"model {name!r} cannot process {image_size}x{image_size} inputs{need}; "
                         f"pass a larger --image-size, e.g. --image-size {max(32, reduction or 32)}") from err
    finally:
        model.train(was_training)


def count_params_m(module: nn.Module) -> float:
    """Number of parameters of ``module`` in millions."""
    return sum(p.numel() for p in module.parameters()) / 1e6
