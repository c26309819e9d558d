"""Model zoo: the paper's CNNs, ResNet-7 and naive Inception, plus tiny test variants.

Use :func:`create_model` with a name from :func:`list_models`; every model exposes
``get_classifier()`` (the final Linear, never to be pruned), ``input_shape`` (C, H, W) and
``widths`` (the conv output channels it was built with). Importing this package imports the
family modules, which registers their models.
"""

from __future__ import annotations

from fedprune.models import cnn as _cnn  # noqa: F401  (registers cnn_femnist, cnn_celeba)
from fedprune.models import inception as _inception  # noqa: F401  (inception, tiny_inception)
from fedprune.models import resnet as _resnet  # noqa: F401  (resnet7, tiny_resnet)
from fedprune.models.registry import (
    create_model,
    list_models,
    model_defaults,
    register_model,
    scaled_widths,
)
from fedprune.models.spec import ModelSpec, build, new_model

__all__ = [
    "ModelSpec",
    "build",
    "create_model",
    "list_models",
    "model_defaults",
    "new_model",
    "register_model",
    "scaled_widths",
]
