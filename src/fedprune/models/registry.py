"""Model registry: ``@register_model``, ``create_model``, ``list_models``, ``model_defaults``.

A factory is registered under a name with :func:`register_model`. Its signature must be
``factory(num_classes, in_channels=..., image_size=..., widths=...)``; the keyword defaults
of that signature *are* the model's defaults (``model_defaults`` reads them with
:mod:`inspect`), so there is one source for each default. ``widths`` defaults must be tuples.

:func:`create_model` checks the generic arguments (``num_classes``, ``in_channels``,
``image_size`` positive; ``widths`` the registered length, every entry >= 1) and the model
constructors check that ``image_size`` is large enough for their down-sampling
(:func:`check_image_size`). Every error is a ``ValueError`` whose message says how to fix it.

The only module state is ``_REGISTRY``, filled once when the family modules are imported.
The small helpers at the bottom (:func:`conv_out`, :func:`check_image_size`,
:func:`keras_init_`) are shared by the family modules.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from torch import nn

ModelFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFactory)

_REGISTRY: dict[str, ModelFactory] = {}
_DEFAULT_KEYS = ("in_channels", "image_size", "widths")


def register_model(name: str) -> Callable[[F], F]:
    """Register ``factory`` under ``name``; raise if the name is taken or defaults are missing."""

    def decorator(factory: F) -> F:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered; pick another name")
        params = inspect.signature(factory).parameters
        missing = [
            k
            for k in _DEFAULT_KEYS
            if k not in params or params[k].default is inspect.Parameter.empty
        ]
        if "num_classes" not in params or missing:
            raise ValueError(
                f"factory for {name!r} must take num_classes and keyword defaults for "
                f"{', '.join(_DEFAULT_KEYS)}; missing defaults: {missing}"
            )
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def _get_factory(name: str) -> ModelFactory:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; choose one of: {', '.join(list_models())}"
        ) from None


def model_defaults(name: str) -> dict[str, Any]:
    """Default ``in_channels``, ``image_size`` and ``widths`` (a fresh list) of model ``name``."""
    params = inspect.signature(_get_factory(name)).parameters
    return {
        "in_channels": int(params["in_channels"].default),
        "image_size": int(params["image_size"].default),
        "widths": [int(w) for w in params["widths"].default],
    }


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    widths: list[int] | None = None,
) -> nn.Module:
    """Build model ``name`` for ``in_channels`` x ``image_size`` x ``image_size`` inputs.

    ``widths`` lists the output channels of the model's convolutions in order; ``None`` uses
    the registered default. Raises ``ValueError`` for unknown names or bad arguments.
    """
    factory = _get_factory(name)
    default_widths = model_defaults(name)["widths"]
    for arg, value in (
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("image_size", image_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    if widths is None:
        widths = default_widths
    widths = list(widths)
    if len(widths) != len(default_widths):
        raise ValueError(
            f"{name!r} needs {len(default_widths)} widths (one per conv, e.g. the default "
            f"{default_widths}), got {len(widths)}: {widths}"
        )
    bad = [w for w in widths if isinstance(w, bool) or not isinstance(w, int) or w < 1]
    if bad:
        raise ValueError(f"every width of {name!r} must be an int >= 1, got {widths}")
    return factory(num_classes, in_channels=in_channels, image_size=image_size, widths=widths)


def scaled_widths(name: str, fraction: float, *, num_classes: int, in_channels: int,
                  image_size: int) -> list[int]:
    """The default widths of ``name`` scaled uniformly to fit ``fraction`` of its parameters.

    Every width becomes ``max(1, floor(w * s))`` for the largest scale ``s`` in ``(0, 1]``
    whose model has at most ``fraction`` x the default model's trainable parameters: the
    "same budget, trained from scratch" baseline of a pruned model.  Raises ``ValueError``
    when ``fraction`` is not in ``(0, 1]`` or even every width at 1 does not fit.
    """
    from ..metrics.size import n_params

    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    defaults = model_defaults(name)["widths"]
    kw = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}

    def params(widths: list[int]) -> int:
        return n_params(create_model(name, widths=widths, **kw))

    def at(scale: float) -> list[int]:
        return [max(1, int(w * scale)) for w in defaults]

    limit = fraction * params(defaults)
    if params(at(0.0)) > limit:
        raise ValueError(f"{name!r} has more than {fraction:.3g} of its parameters even with "
                         "every width at 1")
    lo, hi = 0.0, 1.0  # params(at(lo)) <= limit; widths only grow with the scale
    if params(at(hi)) <= limit:
        return at(hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        if params(at(mid)) <= limit:
            lo = mid
        else:
            hi = mid
    return at(lo)


# ----------------------------------------------------------------- helpers for family modules


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0, ceil: bool = False) -> int:
    """Output length of a conv / pool along one axis (PyTorch formula; ``ceil`` = ceil_mode)."""
    span = size + 2 * padding - kernel
    if span < 0:
        return 0
    return (math.ceil(span / stride) if ceil else span // stride) + 1


def check_image_size(name: str, image_size: int, is_valid: Callable[[int], bool]) -> None:
    """Raise ``ValueError`` naming the smallest valid size if ``is_valid(image_size)`` fails."""
    if is_valid(image_size):
        return
    smallest = next((n for n in range(1, 4097) if is_valid(n)), None)
    hint = f"use image_size >= {smallest}" if smallest is not None else "no size up to 4096 works"
    raise ValueError(
        f"image_size={image_size} is too small for {name!r}: a feature map would vanish "
        f"(or BatchNorm would see one value per channel); {hint}"
    )


def keras_init_(module: nn.Module) -> None:
    """Keras defaults: Glorot-uniform conv/dense kernels, zero biases (in place)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def as_int_list(widths: Sequence[int]) -> list[int]:
    """Copy ``widths`` to a plain ``list[int]``."""
    return [int(w) for w in widths]
