"""Moved to :mod:`fedprune.pruners.auto`; this path is kept for the documented name."""
from ..pruners.auto import AutoPruner, paired  # noqa: F401
