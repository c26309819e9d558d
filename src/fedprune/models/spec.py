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

from ..pruning import mark_fixed, rebuild
from .registry import create_model


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
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"model spec is not valid JSON: {exc}") from None
        if not isinstance(d, dict):
            raise ValueError("model spec must be a JSON object")
        expected = {"name", "num_classes", "in_channels", "image_size", "widths", "record"}
        if set(d) != expected:
            raise ValueError(f"model spec keys must be {sorted(expected)}, got {sorted(d)}")
        for key in ("num_classes", "in_channels", "image_size"):
            if not isinstance(d[key], int) or isinstance(d[key], bool) or d[key] < 1:
                raise ValueError(f"model spec: {key} must be a positive integer")
        if not isinstance(d["name"], str):
            raise ValueError("model spec: name must be a string")
        return cls(**d)

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
                     None if widths is None else list(widths), mark_fixed(model, example))
    return model, spec


def build(spec: ModelSpec) -> nn.Module:
    """A model with the architecture of ``spec`` (weights to be loaded by the caller)."""
    model = create_model(spec.name, num_classes=spec.num_classes, in_channels=spec.in_channels,
                         image_size=spec.image_size, widths=spec.widths)
    return rebuild(model, spec.record, spec.example_input())
