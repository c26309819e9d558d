"""``fedprune data info``: clients, samples, classes and a text histogram of client sizes."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import ConfigError, DataConfig
from .cache import Prepared
from .registry import SPECS


def histogram(sizes: np.ndarray, bins: int = 10, width: int = 40) -> list[str]:
    """Text histogram of ``sizes`` (integers): one line per bin, ``lo-hi | ### count``."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.size == 0:
        return ["  (no clients)"]
    lo, hi = int(sizes.min()), int(sizes.max())
    if lo == hi:
        return [f"  {lo:>7} | {'#' * width} {sizes.size}"]
    edges = np.unique(np.linspace(lo, hi + 1, min(bins, hi - lo + 1) + 1).round().astype(int))
    counts, _ = np.histogram(sizes, bins=edges)
    top = max(int(counts.max()), 1)
    lines = []
    for a, b, c in zip(edges[:-1], edges[1:], counts, strict=True):
        bar = "#" * round(width * c / top)
        lines.append(f"  {a:>7}-{b - 1:<7} | {bar:<{width}} {c}")
    return lines


def _stats(sizes: np.ndarray) -> str:
    return (f"min {int(sizes.min())}, median {int(np.median(sizes))}, mean "
            f"{float(sizes.mean()):.1f}, max {int(sizes.max())}")


def summarize(prep: Prepared) -> dict[str, Any]:
    """Counts of a prepared dataset, as the files hold it (before any partitioning)."""
    meta = prep.meta
    train = prep.splits == 0
    test = prep.splits == 1
    out: dict[str, Any] = {
        "dataset": meta["name"], "format": meta["format"], "source": meta["source"]["path"],
        "cache": str(prep.directory) if prep.directory else None, "reused": prep.reused,
        "seconds": round(prep.seconds, 3), "shape": meta["shape"],
        "num_classes": int(meta["num_classes"]), "train_samples": int(train.sum()),
        "test_samples": int(test.sum()), "mean": meta["mean"], "std": meta["std"],
        "classes_present": int(np.unique(prep.labels[train]).size),
    }
    if meta.get("natural"):
        sizes = np.bincount(prep.clients[train], minlength=len(prep.client_names))
        out["clients"] = int((sizes > 0).sum())
        out["client_sizes"] = sizes[sizes > 0]
    return out


def describe(cfg: DataConfig, seed: int = 0) -> str:
    """The text ``fedprune data info`` prints."""
    from .federated import load_federated, load_prepared, plan

    spec = SPECS[cfg.name]
    lines = [f"dataset     {cfg.name}: {spec.description}"]
    if cfg.name == "digits":
        data = load_federated(cfg, seed)
        sizes = np.array([len(c) for c in data.clients])
        lines += [
            "source      scikit-learn's load_digits (embedded, no files)",
            (f"image       {'x'.join(map(str, data.input_shape))} float32, "
             f"{data.num_classes} classes"),
            f"samples     {int(sizes.sum())} train + {len(data.test_y)} test",
        ]
        part_sizes = sizes
    else:
        prep = load_prepared(cfg)
        s = summarize(prep)
        how = "reused" if s["reused"] else "prepared"
        lines += [
            f"source      {s['source']} ({s['format']})",
            f"cache       {s['cache'] or 'off (read into memory)'} ({how} in {s['seconds']:.2f} s)",
            (f"image       {'x'.join(map(str, s['shape']))} uint8, mean "
             f"{', '.join(f'{m:.3f}' for m in s['mean'])}, std "
             f"{', '.join(f'{v:.3f}' for v in s['std'])} (of pixel / 255)"),
            f"classes     {s['num_classes']} ({s['classes_present']} present in train)",
            f"samples     {s['train_samples']} train + {s['test_samples']} test"
            + ("" if s["test_samples"] else
               f" (no test split in the files: data.test_fraction = {cfg.test_fraction} "
               "is held out)"),
        ]
        if "clients" in s:
            lines += [(f"clients     {s['clients']} {spec.client_key}s in the files; train "
                       f"samples per {spec.client_key}: {_stats(s['client_sizes'])}"),
                      f"train samples per {spec.client_key} (all {s['clients']}):"]
            lines += histogram(s["client_sizes"])
        try:
            p = plan(prep, cfg, seed)
        except (ConfigError, ValueError) as exc:  # the files are described all the same
            lines.append(f"partition   data.partition={cfg.partition}, data.num_clients="
                         f"{cfg.num_clients or 'auto'}: cannot be drawn from these files: {exc}")
            return "\n".join(lines)
        part_sizes = np.array([b.size for b in p.train])
    lines.append(f"partition   data.partition={cfg.partition}, {len(part_sizes)} clients "
                 f"(seed {seed}): train samples per client {_stats(part_sizes)}")
    lines += histogram(part_sizes)
    return "\n".join(lines)
