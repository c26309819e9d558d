"""Datasets and partitioners: everything returns ready tensors, split per client."""

from .federated import ClientData, FederatedData, load_federated
from .partition import dirichlet_partition, iid_partition, partition_report

__all__ = [
    "ClientData",
    "FederatedData",
    "dirichlet_partition",
    "iid_partition",
    "load_federated",
    "partition_report",
]
