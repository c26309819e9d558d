import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory):
    """Every test (and every process a test starts) prepares data in a cache folder of its
    own session, never in the user's ~/.cache/fedprune."""
    import os

    path = tmp_path_factory.mktemp("fedprune-cache")
    before = os.environ.get("FEDPRUNE_CACHE_DIR")
    os.environ["FEDPRUNE_CACHE_DIR"] = str(path)
    yield path
    if before is None:
        os.environ.pop("FEDPRUNE_CACHE_DIR", None)
    else:
        os.environ["FEDPRUNE_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory):
    """A folder of Fashion-MNIST's four gzipped IDX files, named as Debian's
    dataset-fashion-mnist installs them (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
    t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz), in the real format: 600 training and
    100 test images of 28x28, labels 0-9."""
    from fedprune.data.synthetic import write_idx

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (700, 28, 28), dtype=np.uint8)
    y = rng.permutation(np.arange(700) % 10).astype(np.uint8)
    return write_idx(tmp_path_factory.mktemp("fashion-mnist"), (x[:600], y[:600]),
                     (x[600:], y[600:]))


@pytest.fixture
def no_default_fashion(tmp_path, monkeypatch):
    """Fashion-MNIST's default folder made one that does not exist, and no $FEDPRUNE_*: the
    plan then depends on nothing installed on the machine."""
    from fedprune.data.registry import SPECS

    spec = SPECS["fashion-mnist"]
    absent = tmp_path / "not-installed" / "fashion-mnist"
    monkeypatch.setitem(SPECS, "fashion-mnist",
                        type(spec)(**{**spec.__dict__, "default_path": str(absent)}))
    for var in ("FEDPRUNE_FEMNIST", "FEDPRUNE_CELEBA", "FEDPRUNE_FASHION_MNIST"):
        monkeypatch.delenv(var, raising=False)
    return absent
