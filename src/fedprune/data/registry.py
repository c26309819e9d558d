"""The named datasets: what each one is, where it lives by default, which formats it comes in."""

from __future__ import annotations

from dataclasses import dataclass

FORMATS = ("auto", "leaf", "tff-sqlite", "tff-hdf5", "parquet", "idx", "hub")

# EMNIST's IDX subsets and their class counts (``letters`` labels run 1..26, so 27 slots)
EMNIST_SUBSETS = {"byclass": 62, "bymerge": 47, "balanced": 47, "letters": 27, "digits": 10,
                  "mnist": 10}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    shape: tuple[int, int, int]  # (C, H, W) as stored in the cache
    formats: tuple[str, ...]  # on-disk formats it can be read from
    natural: bool  # has natural client ids (writer, celebrity)
    default_path: str = ""  # used when data.path is empty
    hub_id: str = ""  # Hugging Face dataset id fetched through flwr-datasets (format=hub)
    client_key: str = ""  # what a natural client is, for messages
    description: str = ""


SPECS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        "digits", 10, (1, 28, 28), (), False,
        description="scikit-learn's 1,797 8x8 digits, embedded, resized (data.image_size)"),
    "femnist": DatasetSpec(
        "femnist", 62, (1, 28, 28), ("leaf", "tff-sqlite", "tff-hdf5", "parquet", "hub"), True,
        hub_id="flwrlabs/femnist", client_key="writer",
        description="FEMNIST: 62 classes, 28x28 grey, one client per writer"),
    "celeba": DatasetSpec(
        "celeba", 2, (3, 84, 84), ("leaf", "parquet", "hub"), True,
        hub_id="flwrlabs/celeba", client_key="celebrity",
        description="CelebA: binary attribute (data.attribute, default Male), 84x84 RGB, "
                    "one client per celebrity"),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", 10, (1, 28, 28), ("idx",), False,
        default_path="/usr/share/datasets/fashion-mnist",
        description="Fashion-MNIST IDX files (Debian package dataset-fashion-mnist)"),
    "mnist": DatasetSpec(
        "mnist", 10, (1, 28, 28), ("idx",), False,
        description="MNIST IDX files"),
    "emnist": DatasetSpec(
        "emnist", 62, (1, 28, 28), ("idx",), False,
        description="EMNIST IDX files (data.subset: byclass, bymerge, balanced, letters, "
                    "digits, mnist)"),
}

NAMES = tuple(SPECS)


def spec_for(name: str, subset: str = "") -> DatasetSpec:
    spec = SPECS[name]
    if name == "emnist":
        classes = EMNIST_SUBSETS.get(subset or "byclass", 62)
        spec = DatasetSpec(**{**spec.__dict__, "num_classes": classes})
    return spec
