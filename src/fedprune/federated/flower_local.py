"""Run the Flower App on this machine, for tests, benchmarks and debugging.

* :class:`LocalFlower` starts real Flower processes on loopback -- a ``flower-superlink``
  (deployment or ``--simulation``), any number of ``flower-supernode`` processes, each with
  its own ``partition-id`` -- submits runs with ``flwr run`` and shuts down **every** process
  it started, by pid, including the ones Flower detaches (SuperExec, ServerApp, ClientApp,
  Ray): each gets a unique marker in its environment, which all descendants inherit.
* :class:`LocalGrid` is an in-process :class:`flwr.serverapp.Grid` whose nodes call the
  ClientApp directly: the strategy's logic without any Flower process (unit tests).

The Flower configuration (``FLWR_HOME``) lives in the work directory, never in ``~/.flwr``.

* :func:`set_connection` adds or replaces one SuperLink connection in Flower's config file,
  idempotently (``python -m fedprune.federated.flower_local set-connection NAME ADDRESS``,
  the step docs/flower.md uses for the deployment engine).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Self

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

__all__ = ["FLOWER_APP_DIR", "FlowerProcessError", "LocalFlower", "LocalGrid",
           "flwr_config_path", "format_run_config", "free_port", "main", "set_connection"]

#: ``flower/`` at the repository root: the Flower App's ``pyproject.toml``.
FLOWER_APP_DIR = Path(__file__).resolve().parents[3] / "flower"

_MARK = "FEDPRUNE_FLOWER_MARK"


class FlowerProcessError(RuntimeError):
    """A Flower process did not start, or a run did not finish."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def format_run_config(values: Mapping[str, Any]) -> str:
    """``{"fed.rounds": 3, "out-dir": "/x"}`` -> ``fed.rounds=3 out-dir="/x"`` (``--run-config``)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        elif isinstance(value, str):
            if '"' in value:
                raise ValueError(f"run-config value for {key} cannot hold '\"': {value!r}")
            text = f'"{value}"'
        else:
            raise TypeError(f"run-config value for {key} must be bool, int, float or str")
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def _marked_pids(mark: str) -> list[int]:
    """Pids of live processes whose environment holds ``FEDPRUNE_FLOWER_MARK=mark``."""
    needle = f"{_MARK}={mark}".encode()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # a zombie: nothing left to kill
            continue
        if needle in env.split(b"\0"):
            out.append(int(entry.name))
    return out


# ---------------------------------------------------------------- Flower's config file


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
    """``python -m fedprune.federated.flower_local set-connection NAME ADDRESS [--secure]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m fedprune.federated.flower_local",
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


# ---------------------------------------------------------------- processes


class LocalFlower:
    """Flower processes on 127.0.0.1 with free ports, a private ``FLWR_HOME`` and logs.

    Use as a context manager; :meth:`close` (also on error) stops every process started.
    """

    def __init__(self, workdir: Path, app_dir: Path = FLOWER_APP_DIR,
                 env: Mapping[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.app_dir = Path(app_dir)
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(exist_ok=True)
        self.mark = uuid.uuid4().hex
        self.env = dict(os.environ)
        self.env.update({
            "FLWR_HOME": str(self.home),
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",  # launch Client/ServerApps sooner
            _MARK: self.mark,
        })
        self.env.update(env or {})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.port: int | None = None
        self.connection = "fedprune-local"

    # -- context manager
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- processes
    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                                    cwd=self.workdir, start_new_session=True)
        self.procs[name] = proc
        self.logs[name] = log
        return proc

    def log_tail(self, name: str, lines: int = 40) -> str:
        try:
            text = self.logs[name].read_text(errors="replace")
        except (KeyError, OSError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start_superlink(self, simulation: bool = False, timeout: float = 60.0) -> int:
        """Start ``flower-superlink --insecure`` on a free port; wait until it answers."""
        if "superlink" in self.procs:
            raise FlowerProcessError("a SuperLink is already running")
        self.port = free_port()
        cmd = [_bin("flower-superlink"), "--insecure", "--host", "127.0.0.1",
               "--port", str(self.port), "--disable-runtime-dependency-installation"]
        if simulation:
            cmd.append("--simulation")
        proc = self._spawn("superlink", cmd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise FlowerProcessError(f"flower-superlink exited with {proc.returncode}:\n"
                                         + self.log_tail("superlink"))
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health",
                                            timeout=1) as res:
                    if res.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise FlowerProcessError(f"flower-superlink not ready in {timeout:.0f} s:\n"
                                     + self.log_tail("superlink"))
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{self.connection}"\n\n'
            f'[superlink.{self.connection}]\naddress = "127.0.0.1:{self.port}"\n'
            "insecure = true\n", encoding="utf-8")
        return self.port

    def start_supernode(self, partition_id: int, num_partitions: int,
                        node_config: Mapping[str, Any] | None = None) -> str:
        """Start ``flower-supernode`` serving ``partition_id``; returns its name."""
        if self.port is None:
            raise FlowerProcessError("start the SuperLink first")
        name = f"supernode-{partition_id}"
        cfg = {"partition-id": partition_id, "num-partitions": num_partitions,
               **(node_config or {})}
        self._spawn(name, [
            _bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
            "--host", "127.0.0.1", "--port", str(free_port()),
            "--node-config", format_run_config(cfg),
        ])
        return name

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process ``name`` (and its process group) -- a crash, not a stop."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def run(self, run_config: Mapping[str, Any], *, timeout: float = 600.0,
            federation_config: Mapping[str, Any] | None = None) -> str:
        """``flwr run <app> <connection> --run-config ... --stream``; returns its output.

        Raises :class:`FlowerProcessError` when ``flwr`` fails or outlives ``timeout``, or
        when the run did not end ``finished:completed`` (``flwr run --stream`` exits with 0
        either way; ``flwr ls`` has the status).
        """
        proc = self.submit(run_config, federation_config=federation_config)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise FlowerProcessError(f"flwr run did not finish in {timeout:.0f} s:\n"
                                     + self.log_tail("flwr-run", 80)) from None
        out = self.logs["flwr-run"].read_text(errors="replace")
        if proc.returncode != 0:
            raise FlowerProcessError(f"flwr run exited with {proc.returncode}:\n{out[-6000:]}")
        match = re.search(r"Successfully started run (\d+)", out)
        if match is None:
            raise FlowerProcessError(f"flwr run started no run:\n{out[-6000:]}")
        info = self.run_info(int(match.group(1)))
        if info.get("status") != "finished:completed":
            raise FlowerProcessError(f"run {match.group(1)} ended {info.get('status')}: "
                                     f"{info.get('status-details', '')}\n{out[-6000:]}")
        return out

    def run_info(self, run_id: int, wait: float = 10.0) -> dict[str, Any]:
        """``flwr ls --run-id`` as JSON (``status``: ``finished:completed``, ``finished:failed``,
        ...), waiting up to ``wait`` seconds for the run to be finished."""
        deadline = time.monotonic() + wait
        while True:
            res = subprocess.run([_bin("flwr"), "ls", self.connection, "--run-id", str(run_id),
                                  "--format", "json"], env=self.env, cwd=self.workdir,
                                 capture_output=True, text=True, timeout=60, check=False)
            try:
                info: dict[str, Any] = json.loads(res.stdout)["runs"][0]
            except (ValueError, KeyError, IndexError):
                raise FlowerProcessError(f"flwr ls failed ({res.returncode}): "
                                         f"{res.stdout[-2000:]}{res.stderr[-2000:]}") from None
            if str(info.get("status", "")).startswith("finished") or (
                    time.monotonic() >= deadline):
                return info
            time.sleep(0.5)

    def submit(self, run_config: Mapping[str, Any], *,
               federation_config: Mapping[str, Any] | None = None) -> subprocess.Popen[bytes]:
        """Start ``flwr run ... --stream`` in the background (it exits when the run ends)."""
        if self.port is None:
            raise FlowerProcessError("start the SuperLink first")
        cmd = [_bin("flwr"), "run", str(self.app_dir), self.connection,
               "--run-config", format_run_config(run_config), "--stream"]
        if federation_config:
            cmd += ["--federation-config", format_run_config(federation_config)]
        self.procs.pop("flwr-run", None)
        if "flwr-run" in self.logs:
            self.logs["flwr-run"].unlink(missing_ok=True)
        return self._spawn("flwr-run", cmd)

    def pids(self) -> list[int]:
        """Every live process started here, detached descendants included."""
        return sorted(set(_marked_pids(self.mark))
                      | {p.pid for p in self.procs.values() if p.poll() is None})

    def close(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL, every process started here; reap them; no leftovers."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            pids = self.pids()
            if not pids:
                break
            for proc in self.procs.values():
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, sig)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                for proc in self.procs.values():
                    proc.poll()
                if not self.pids():
                    break
                time.sleep(0.1)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        left = self.pids()
        if left:
            raise FlowerProcessError(f"processes still alive after SIGKILL: {left}")


class LocalGrid(Grid):
    """An in-process Grid: each node is the ClientApp called directly, one after the other.

    ``node_configs[i]`` is node ``i``'s node config (its ``partition-id``).  ``dead`` holds
    node ids that never answer; ``tamper(message, reply)`` may replace a reply (tests).
    """

    def __init__(self, client_app: Any, node_configs: Iterable[Mapping[str, Any]],
                 tamper: Callable[[Message, Message], Message] | None = None) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
            if getattr(TaskIdentity, attr) is None:
                setattr(TaskIdentity, attr, value)
        self.client_app = client_app
        self.contexts = {
            1000 + i: Context(run_id=1, node_id=1000 + i, node_config=dict(c),
                              state=RecordDict(), run_config={})
            for i, c in enumerate(node_configs)
        }
        self.dead: set[int] = set()
        self.tamper = tamper
        self.sent: list[Message] = []
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Any) -> None:  # pragma: no cover - not used in process
        self._run = run

    @property
    def run(self) -> Any:  # pragma: no cover
        return getattr(self, "_run", None)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message now; its reply waits for :meth:`pull_messages`."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id
            self.sent.append(msg)
            ids.append(msg.metadata.message_id)
            node = msg.metadata.dst_node_id
            if node in self.dead or node not in self.contexts:
                continue
            try:
                reply = self.client_app(msg, self.contexts[node])
            except Exception as exc:  # noqa: BLE001 - Flower turns it into an error reply
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"),
                                reply_to=msg)
            if self.tamper is not None:
                reply = self.tamper(msg, reply)
            self._replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


if __name__ == "__main__":
    sys.exit(main())
