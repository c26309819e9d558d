"""The embedded offline default: scikit-learn's handwritten digits, resized to 28x28.

1,797 grey 8x8 images of the digits 0-9 ship inside scikit-learn, so this set needs no
download.  They are scaled to [0, 1], resized (bilinear) so that the CNN-FEMNIST
architecture applies unchanged, and standardised with fixed constants.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DIGITS_MEAN = 0.305
DIGITS_STD = 0.325


def load_digits_arrays(image_size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as ``(x [N,1,S,S] float32 standardised, y [N] int64)``."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn, offline

    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    # standardise with fixed constants (the resized set's pixel mean and std, rounded) so
    # every client applies the same transform without seeing the others' data
    x = (x - DIGITS_MEAN) / DIGITS_STD
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return x.contiguous(), y
