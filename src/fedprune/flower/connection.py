"""Flower's connection config: add or replace one SuperLink connection, idempotently.

``python -m fedprune.flower set-connection NAME ADDRESS [--secure | --root-certificates CA]``
(the step docs/flower.md uses for the deployment engine) writes ``[superlink.NAME]`` into
Flower's config file (``$FLWR_HOME/config.toml``, else ``~/.flwr/config.toml``): ``address``
and either ``insecure = true`` (a SuperLink started ``--insecure``), nothing more (TLS, the
SuperLink's certificate checked against flwr's default trust store), or
``root-certificates`` (TLS, checked against this CA certificate: an absolute path, as Flower
requires).
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


def _toml_string(value: str) -> str:
    """``value`` as a TOML basic string."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{value!r} cannot hold control characters")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def set_connection(name: str, address: str, *, insecure: bool | None = None,
                   root_certificates: str | os.PathLike[str] | None = None,
                   path: Path | None = None) -> Path:
    """Add or replace the SuperLink connection ``[superlink.<name>]`` in Flower's config file.

    ``insecure=True`` (the default without ``root_certificates``) writes ``insecure = true``,
    for a SuperLink started with ``--insecure``; ``insecure=False`` alone writes neither key
    (TLS, checked against flwr's default trust store); ``root_certificates`` (a PEM CA
    certificate, e.g. the ``ca.crt`` of ``scripts/make_certs.sh``) writes
    ``root-certificates`` with its absolute path: TLS, the SuperLink's certificate checked
    against that CA.  It cannot be combined with ``insecure=True``.

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
    if insecure is None:
        insecure = root_certificates is None
    expected: dict[str, object] = {"address": address}
    if root_certificates is not None:
        if insecure:
            raise ValueError("root_certificates is for a TLS connection, not insecure=True")
        ca = Path(root_certificates).expanduser().resolve()
        if not ca.is_file():
            raise ValueError(f"root certificates {ca}: no such file")
        expected["root-certificates"] = str(ca)
    elif insecure:
        expected["insecure"] = True
    path = Path(path) if path is not None else flwr_config_path()
    if path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        from flwr.cli.constant import DEFAULT_FLOWER_CONFIG_TOML

        text = DEFAULT_FLOWER_CONFIG_TOML
    table = f'[superlink.{name}]\naddress = "{address}"\n'
    if "root-certificates" in expected:
        table += f"root-certificates = {_toml_string(str(expected['root-certificates']))}\n"
    elif insecure:
        table += "insecure = true\n"
    kept = _drop_table(text, f"superlink.{name}").rstrip("\n")
    new = f"{kept}\n\n{table}" if kept else table
    try:
        doc = tomllib.loads(new)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML even without [superlink.{name}] ({exc}); "
                         "fix it by hand") from None
    if doc["superlink"][name] != expected:
        raise ValueError(f"{path}: [superlink.{name}] is also set elsewhere in the file "
                         "(dotted keys); fix it by hand")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m fedprune.flower set-connection NAME ADDRESS [--secure | --root-certificates
    CA]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m fedprune.flower",
        description="Add or update a SuperLink connection in Flower's config file "
                    "($FLWR_HOME/config.toml, else ~/.flwr/config.toml); safe to repeat.")
    sub = parser.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("set-connection", help="add or replace [superlink.NAME]")
    sc.add_argument("name", help="connection name, e.g. local-deployment")
    sc.add_argument("address", help="SuperLink Control API address, e.g. 127.0.0.1:9091")
    tls = sc.add_mutually_exclusive_group()
    tls.add_argument("--secure", action="store_true",
                     help="TLS, the SuperLink's certificate checked against flwr's default "
                          "trust store (default: insecure = true, for a SuperLink started "
                          "--insecure on 127.0.0.1)")
    tls.add_argument("--root-certificates", metavar="CA", default=None,
                     help="TLS, the SuperLink's certificate checked against this PEM CA "
                          "certificate (the ca.crt of scripts/make_certs.sh)")
    args = parser.parse_args(argv)
    secure = args.secure or args.root_certificates is not None
    try:
        path = set_connection(args.name, args.address, insecure=not secure,
                              root_certificates=args.root_certificates)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.root_certificates is not None:
        ca = Path(args.root_certificates).expanduser().resolve()
        extra = f", root-certificates = \"{ca}\""
    else:
        extra = "" if secure else ", insecure = true"
    print(f"{path}: [superlink.{args.name}] address = \"{args.address}\"{extra}")
    return 0
