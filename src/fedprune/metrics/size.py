"""Model size and cost metrics: trainable parameters, MACs/FLOPs and payload bytes.

Conventions
-----------
* **MACs** (multiply-accumulates) are counted for ONE sample's forward pass with
  forward hooks on :class:`torch.nn.Conv2d` and :class:`torch.nn.Linear` only:

  - ``Conv2d``: ``output.numel() * in_channels / groups * kh * kw``
  - ``Linear``: ``output.numel() * in_features``

  Bias additions, batch norm, activations, pooling, element-wise ops and any
  functional (non-module) computation are *not* counted. This matches what
  :class:`torch.utils.flop_counter.FlopCounterMode` counts for convolutions and
  matrix multiplies (it also ignores bias), up to the factor 2 below.
* **FLOPs** are defined as ``2 * MACs`` (one multiply plus one add per MAC).
* **Payload bytes** are the bytes of the floating-point tensors of a
  ``state_dict``: every floating-point entry (parameters and float buffers such as
  BN ``running_mean``/``running_var``) contributes ``numel * dtype_bytes``; integer
  buffers such as ``num_batches_tracked`` are not counted.  This is a model's weight
  size; what a message weighs on the wire (integer buffers, texts and metrics
  included) is counted by :mod:`fedprune.federated.meter`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["count_flops", "count_macs", "n_params", "payload_bytes"]


def n_params(model: nn.Module) -> int:
    """Return the number of trainable (``requires_grad``) parameters of ``model``."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Count multiply-accumulates of one sample's forward pass.

    Only ``nn.Conv2d`` (``out elements x in_channels/groups x kh x kw``) and
    ``nn.Linear`` (``out elements x in_features``) are counted; bias, BN, ReLU,
    pooling and other ops are ignored (see module docstring). The model is run
    in eval mode under ``torch.no_grad``; its training flag is restored and all
    hooks are removed afterwards, even on error.

    Args:
        model: the network to measure.
        example_input: an input batch; batch size 1 is recommended. For a
            batch of size ``B > 1`` the total is divided by ``B``.

    Returns:
        MACs per sample as an ``int``.
    """
    total = 0

    def conv_hook(module: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv2d)
        kh, kw = module.kernel_size
        total += out.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Linear)
        total += out.numel() * module.in_features

    handles = []
    was_training = model.training
    try:
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                handles.append(module.register_forward_hook(conv_hook))
            elif isinstance(module, nn.Linear):
                handles.append(module.register_forward_hook(linear_hook))
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    batch = int(example_input.shape[0]) if example_input.dim() > 0 else 1
    return int(total // max(batch, 1))


def count_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """Return FLOPs of one sample's forward pass, defined as ``2 * count_macs``."""
    return 2 * count_macs(model, example_input)


def payload_bytes(
    state_dict_or_model: nn.Module | Mapping[str, torch.Tensor], dtype_bytes: int = 4
) -> int:
    """Return the bytes of a model's floating-point weights.

    Sums ``numel * dtype_bytes`` over the floating-point tensors of the
    ``state_dict`` (parameters and float buffers such as BN running stats).
    Integer buffers such as ``num_batches_tracked`` are not counted (the
    meter, :mod:`fedprune.federated.meter`, counts what a message carries).

    Args:
        state_dict_or_model: an ``nn.Module`` or a ``state_dict`` mapping.
        dtype_bytes: bytes per element (4 for float32).
    """
    if isinstance(state_dict_or_model, nn.Module):
        state = state_dict_or_model.state_dict()
    else:
        state = state_dict_or_model
    return int(
        sum(
            t.numel() * dtype_bytes
            for t in state.values()
            if isinstance(t, torch.Tensor) and t.is_floating_point()
        )
    )
