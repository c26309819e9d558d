"""The one error type of the data layer."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A data file or folder cannot be used; the message names it and says what is wrong.

    A subclass of ``ValueError`` so that the command line prints ``fedprune: error: ...``
    and exits with status 2 instead of showing a traceback.
    """

    def __init__(self, where: str | Path | None, what: str) -> None:
        self.where = str(where) if where is not None else None
        self.what = what
        super().__init__(f"{where}: {what}" if where is not None else what)
