"""Flower's connection config: add or replace one SuperLink connection, idempotently.

``python -m fedprune.flower set-connection NAME ADDRESS [--secure]`` (the step docs/flower.md
uses for the deployment engine) writes ``[superlink.NAME]`` into Flower's config file
(``$FLWR_HOME/config.toml``, else ``~/.flwr/config.toml``).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

__all__ = ["flwr_config_path", "main", "set_connection"]


def flwr_config_path() -> Path:
    """Flower's configuration file, as ``flwr`` 1.41 finds it: ``$FLWR_HOME/config.toml``,
    else ``~/.flwr/config.toml``."""
    from flwr.supercore.utils import get_flwr_home

    return get_flwr_home() / "config.toml"


_HEADER = re.compile(r"^\s*\[(?!\[)\s*([^\]]+?)\s*\]\s*(#.*)?$")


def _table_name(header: str) -> str:
    """``superlink . "local-deployment"`` -> ``superlink.local-deployment``."""
    return ".".join(part.strip().strip("\"'") for part in header.split("."))


def _drop_table(text: str, table: str) -> str:
    """``text`` without the TOML table ``[table]`` and its sub-tables, however many times
    they occur (a file that has the table twice is not valid TOML; this repairs it)."""
    out, dropping = [], False
    for line in text.splitlines(keepends=True):
        header = _HEADER.match(line) or re.match(r"^\s*\[\[\s*([^\]]+?)\s*\]\]", line)
        if header:
            name = _table_name(header.group(1))
            dropping = name == table or name.startswith(table + ".")
        if not dropping:
            out.append(line)
    return "".join(out)


def set_connection(name: str, address: str, *, insecure: bool = True,
                   path: Path | None = None) -> Path:
    """Add or replace the SuperLink connection ``[superlink.<name>]`` in Flower's config file.

    Idempotent: running it again (or after a hand-appended copy of the table) leaves exactly
    one table with these values; the rest of the file is kept as it is.  A missing file is
    created with Flower's default content first (its ``local`` connection).  The result is
    checked to be valid TOML before it replaces the file (atomically).  Returns the path.
    """
    import tomllib

    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"connection name {name!r}: use letters, digits, '-' and '_' only")
    if '"' in address or "\n" in address:
        raise ValueError(f"address {address!r} cannot hold '\"' or a newline")
    path = Path(path) if path is not None else flwr_config_path()
    if path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        from flwr.cli.constant import DEFAULT_FLOWER_CONFIG_TOML

        text = DEFAULT_FLOWER_CONFIG_TOML
    table = f'[superlink.{name}]\naddress = "{address}"\n'
    if insecure:
        table += "insecure = true\n"
    kept = _drop_table(text, f"superlink.{name}").rstrip("\n")
    new = f"{kept}\n\n{table}" if kept else table
    try:
        doc = tomllib.loads(new)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML even without [superlink.{name}] ({exc}); "
                         "fix it by hand") from None
    if doc["superlink"][name] != {"address": address, **({"insecure": True} if insecure else {})}:
        raise ValueError(f"{path}: [superlink.{name}] is also set elsewhere in the file "
                         "(dotted keys); fix it by hand")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m fedprune.flower set-connection NAME ADDRESS [--secure]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m fedprune.flower",
        description="Add or update a SuperLink connection in Flower's config file "
                    "($FLWR_HOME/config.toml, else ~/.flwr/config.toml); safe to repeat.")
    sub = parser.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("set-connection", help="add or replace [superlink.NAME]")
    sc.add_argument("name", help="connection name, e.g. local-deployment")
    sc.add_argument("address", help="SuperLink Control API address, e.g. 127.0.0.1:9091")
    sc.add_argument("--secure", action="store_true",
                    help="TLS (default: insecure = true, for a SuperLink started --insecure)")
    args = parser.parse_args(argv)
    try:
        path = set_connection(args.name, args.address, insecure=not args.secure)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: [superlink.{args.name}] address = \"{args.address}\""
          + ("" if args.secure else ", insecure = true"))
    return 0
