"""Datasets and partitioners: everything returns ready tensors, split per client.

Named datasets (``data.name``): ``digits`` (embedded), ``femnist``, ``celeba``,
``fashion-mnist``, ``mnist``, ``emnist``; read from LEAF JSON, TFF SQLite/HDF5, Parquet
(flwr-datasets) or IDX files, prepared once into a memory-mapped cache.  See docs/data.md.
"""

from .cache import Prepared, default_cache_dir, open_cache, prepare
from .errors import DataError
from .federated import ClientData, FederatedData, federate, load_federated, load_prepared
from .info import describe, summarize
from .partition import (
    dirichlet_partition,
    flwr_partition,
    holdout_per_client,
    iid_partition,
    natural_partition,
    partition_report,
    split_validation,
)
from .registry import NAMES, SPECS
from .source import detect_format, guess_name, resolve_source
from .transform import PixelTransform, to_float_batch

__all__ = [
    "NAMES",
    "SPECS",
    "ClientData",
    "DataError",
    "FederatedData",
    "PixelTransform",
    "Prepared",
    "default_cache_dir",
    "describe",
    "detect_format",
    "dirichlet_partition",
    "federate",
    "flwr_partition",
    "guess_name",
    "holdout_per_client",
    "iid_partition",
    "load_federated",
    "load_prepared",
    "natural_partition",
    "open_cache",
    "partition_report",
    "prepare",
    "resolve_source",
    "split_validation",
    "summarize",
    "to_float_batch",
]
