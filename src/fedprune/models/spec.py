"""What travels: a JSON description of the architecture, never a pickled module.

A :class:`ModelSpec` names a registered model, its constructor arguments and the pruning record.
A receiver calls :func:`build`: ``create_model`` then :func:`fedprune.pruning.rebuild`, and
loads the weights with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..pruning import initial_record, rebuild
from .registry import create_model

# the largest value a model spec may hold in each field: far above the models fedprune
# trains, far below what would exhaust a machine (a spec is read from files and messages)
LIMITS = {"num_classes": 100_000, "in_channels": 64, "image_size": 4096, "width": 65_536}
MAX_CONVS = 1024  # entries of ``widths``
# the dense model's parameters plus one input and its widest feature map at full resolution
# (float32: 1 GiB): what building the model and tracing it once costs at least
MAX_VALUES = 1 << 28


def _check_int(key: str, value: Any, limit: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ValueError(f"model spec: {key} must be an integer from 1 to {limit:,}, got "
                         f"{value!r:.40}")


def _check_size(spec: ModelSpec) -> None:
    """``ValueError`` when the model ``spec`` describes is too large to build (counted on
    PyTorch's meta device: no memory is allocated)."""
    try:
        with torch.device("meta"):
            model = create_model(spec.name, num_classes=spec.num_classes,
                                 in_channels=spec.in_channels, image_size=spec.image_size,
                                 widths=spec.widths)
    except (RuntimeError, NotImplementedError, TypeError):
        return  # a registered model that cannot be built without memory: the fields bound it
    params = sum(t.numel() for t in model.state_dict().values())
    widest = max((m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)),
                 default=0)
    values = params + (spec.in_channels + widest) * spec.image_size ** 2
    if values > MAX_VALUES:
        raise ValueError(f"model spec: its {spec.name} ({spec.num_classes} classes, "
                         f"{spec.in_channels} x {spec.image_size} x {spec.image_size} inputs, "
                         f"widest layer {widest}) would hold about {values:,} values "
                         "(parameters, one input and its widest feature map), more than the "
                         f"bound of {MAX_VALUES:,}")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    widths: list[int] | None
    record: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """The spec ``text`` describes, every value checked against :data:`LIMITS` (and the
        model it builds against :data:`MAX_VALUES`) before anything is allocated: a spec
        read from a file or a message is not trusted to be sane.  ``ValueError`` naming the
        field and its bound."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"model spec is not valid JSON: {exc}") from None
        except TypeError:
            raise ValueError(f"model spec must be JSON text, got {type(text).__name__}"
                             ) from None
        if not isinstance(d, dict):
            raise ValueError("model spec must be a JSON object")
        expected = {"name", "num_classes", "in_channels", "image_size", "widths", "record"}
        if set(d) != expected:
            raise ValueError(f"model spec keys must be {sorted(expected)}, got {sorted(d)}")
        if not isinstance(d["name"], str):
            raise ValueError("model spec: name must be a string")
        for key in ("num_classes", "in_channels", "image_size"):
            _check_int(key, d[key], LIMITS[key])
        widths = d["widths"]
        if widths is not None:
            if not isinstance(widths, list) or not widths or len(widths) > MAX_CONVS:
                raise ValueError(f"model spec: widths must be null or a list of 1 to "
                                 f"{MAX_CONVS} integers")
            for i, w in enumerate(widths):
                _check_int(f"widths[{i}]", w, LIMITS["width"])
        if not isinstance(d["record"], dict):
            raise ValueError("model spec: record must be a JSON object")  # noqa: TRY004
        spec = cls(**d)
        _check_size(spec)
        return spec

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, self.in_channels, self.image_size, self.image_size)

    def widths_now(self) -> dict[str, int]:
        return {g["root"]: len(g["kept"]) for g in self.record["groups"]}


def new_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    widths: list[int] | None,
    seed: int,
) -> tuple[nn.Module, ModelSpec]:
    """Create a model with seeded initial weights and the spec of its unpruned architecture."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(name, num_classes=num_classes, in_channels=in_channels,
                             image_size=image_size, widths=widths)
    example = torch.zeros(1, in_channels, image_size, image_size)
    spec = ModelSpec(name, num_classes, in_channels, image_size,
                     None if widths is None else list(widths), initial_record(model, example))
    return model, spec


def build(spec: ModelSpec) -> nn.Module:
    """A model with the architecture of ``spec`` (weights to be loaded by the caller)."""
    model = create_model(spec.name, num_classes=spec.num_classes, in_channels=spec.in_channels,
                         image_size=spec.image_size, widths=spec.widths)
    return rebuild(model, spec.record, spec.example_input())
