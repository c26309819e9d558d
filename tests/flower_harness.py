"""Real Flower processes on this machine, for the tests and the benchmarks.

:class:`LocalFlower` starts them on loopback -- a ``flower-superlink`` (deployment or
``--simulation``), any number of ``flower-supernode`` processes, each with its own
``partition-id`` -- submits runs with ``flwr run`` and shuts down **every** process it
started, by pid, including the ones Flower detaches (SuperExec, ServerApp, ClientApp, Ray):
each gets a unique marker in its environment (``FEDPRUNE_FLOWER_MARK``), which all
descendants inherit, and :meth:`LocalFlower.pids` finds them by scanning ``/proc``.  The
Flower configuration (``FLWR_HOME``) lives in the work directory, never in ``~/.flwr``.

Without :class:`TLSFiles` every process runs ``--insecure`` (plain HTTP on loopback, no
authentication).  With them the SuperLink serves TLS (``--ssl-ca-certfile``,
``--ssl-certfile``, ``--ssl-keyfile``), optionally with ``--enable-supernode-auth``;
SuperNodes check its certificate against the CA (``--root-certificates``) and may carry a
node key (``--auth-supernode-private-key``), registered with :meth:`LocalFlower.register_supernode`
(``flwr supernode register``); ``flwr`` reaches the Control API over TLS through the
connection's ``root-certificates``.

Not part of the library: the tests import it from their folder, the benchmarks put
``tests/`` on ``sys.path`` first.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from fedprune.flower.run_config import format_run_config

__all__ = ["FLOWER_APP_DIR", "MARK", "FlowerProcessError", "LocalFlower", "TLSFiles",
           "free_port"]

#: ``flower/`` at the repository root: the Flower App's ``pyproject.toml``.
FLOWER_APP_DIR = Path(__file__).resolve().parents[1] / "flower"

MARK = "FEDPRUNE_FLOWER_MARK"


class FlowerProcessError(RuntimeError):
    """A Flower process did not start, or a run did not finish."""


@dataclass(frozen=True)
class TLSFiles:
    """The SuperLink's TLS files (PEM), e.g. from ``scripts/make_certs.sh``."""

    ca: Path  #: the CA certificate that signed ``cert``; SuperNodes and ``flwr`` trust it
    cert: Path  #: the SuperLink's certificate (subjectAltName 127.0.0.1)
    key: Path  #: its private key

    @classmethod
    def from_dir(cls, folder: Path) -> TLSFiles:
        """``ca.crt``, ``server.crt``, ``server.key`` in ``folder`` (make_certs.sh's names)."""
        folder = Path(folder).resolve()
        return cls(folder / "ca.crt", folder / "server.crt", folder / "server.key")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def _marked_pids(mark: str) -> list[int]:
    """Pids of live processes whose environment holds ``FEDPRUNE_FLOWER_MARK=mark``."""
    needle = f"{MARK}={mark}".encode()
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


# ---------------------------------------------------------------- processes


class LocalFlower:
    """Flower processes on 127.0.0.1 with free ports, a private ``FLWR_HOME`` and logs.

    Use as a context manager; :meth:`close` (also on error) stops every process started.
    """

    def __init__(self, workdir: Path, app_dir: Path = FLOWER_APP_DIR,
                 env: Mapping[str, str] | None = None, tls: TLSFiles | None = None) -> None:
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
            MARK: self.mark,
        })
        self.env.update(env or {})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.port: int | None = None
        self.connection = "fedprune-local"
        self.tls = tls

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

    def start_superlink(self, simulation: bool = False, timeout: float = 60.0, *,
                        supernode_auth: bool = False) -> int:
        """Start ``flower-superlink`` on a free port; wait until it answers.

        ``--insecure`` without :attr:`tls`; with it, TLS, and ``supernode_auth`` adds
        ``--enable-supernode-auth`` (only SuperNodes registered with
        :meth:`register_supernode` may join).  Writes the ``flwr`` connection to it.
        """
        if "superlink" in self.procs:
            raise FlowerProcessError("a SuperLink is already running")
        if supernode_auth and self.tls is None:
            raise FlowerProcessError("SuperNode authentication needs TLS: pass tls=TLSFiles")
        self.port = free_port()
        cmd = [_bin("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
               "--disable-runtime-dependency-installation"]
        if self.tls is None:
            cmd.append("--insecure")
        else:
            cmd += ["--ssl-ca-certfile", str(self.tls.ca), "--ssl-certfile", str(self.tls.cert),
                    "--ssl-keyfile", str(self.tls.key)]
        if supernode_auth:
            cmd.append("--enable-supernode-auth")
        if simulation:
            cmd.append("--simulation")
        proc = self._spawn("superlink", cmd)
        scheme = "http" if self.tls is None else "https"
        context = None if self.tls is None else ssl.create_default_context(
            cafile=str(self.tls.ca))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise FlowerProcessError(f"flower-superlink exited with {proc.returncode}:\n"
                                         + self.log_tail("superlink"))
            try:
                with urllib.request.urlopen(f"{scheme}://127.0.0.1:{self.port}/health",
                                            timeout=1, context=context) as res:
                    if res.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise FlowerProcessError(f"flower-superlink not ready in {timeout:.0f} s:\n"
                                     + self.log_tail("superlink"))
        tls_key = ("insecure = true\n" if self.tls is None
                   else f"root-certificates = {json.dumps(str(Path(self.tls.ca).resolve()))}\n")
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{self.connection}"\n\n'
            f'[superlink.{self.connection}]\naddress = "127.0.0.1:{self.port}"\n'
            + tls_key, encoding="utf-8")
        return self.port

    def start_supernode(self, partition_id: int, num_partitions: int,
                        node_config: Mapping[str, Any] | None = None, *,
                        name: str | None = None, auth_key: Path | None = None,
                        transport: Literal["auto", "insecure", "system-ca"] = "auto",
                        extra_args: Sequence[str] = ()) -> str:
        """Start ``flower-supernode`` serving ``partition_id``; returns its name.

        ``transport``: ``auto`` connects as the SuperLink serves (``--insecure``, or TLS
        checked against :attr:`tls`'s CA with ``--root-certificates``); ``insecure`` forces
        ``--insecure``; ``system-ca`` uses TLS without ``--root-certificates`` (the system's
        CAs).  ``auth_key``: ``--auth-supernode-private-key`` (an OpenSSH EC private key).
        """
        if self.port is None:
            raise FlowerProcessError("start the SuperLink first")
        name = name or f"supernode-{partition_id}"
        if name in self.procs:
            raise FlowerProcessError(f"a process named {name} was started already")
        cfg = {"partition-id": partition_id, "num-partitions": num_partitions,
               **(node_config or {})}
        cmd = [_bin("flower-supernode"), "--superlink", f"127.0.0.1:{self.port}",
               "--host", "127.0.0.1", "--port", str(free_port()),
               "--node-config", format_run_config(cfg)]
        if transport == "insecure" or (transport == "auto" and self.tls is None):
            cmd.append("--insecure")
        elif transport == "auto":
            cmd += ["--root-certificates", str(self.tls.ca)]  # type: ignore[union-attr]
        elif transport != "system-ca":
            raise ValueError(f"transport {transport!r}")
        if auth_key is not None:
            cmd += ["--auth-supernode-private-key", str(auth_key)]
        self._spawn(name, cmd + list(extra_args))
        return name

    def register_supernode(self, public_key: Path) -> int:
        """``flwr supernode register public_key``: the SuperLink admits that key; its id."""
        res = self.flwr("supernode", "register", str(public_key), self.connection,
                        "--format", "json")
        try:
            return int(json.loads(res.stdout)["node-id"])
        except (ValueError, KeyError):
            raise FlowerProcessError(f"flwr supernode register failed ({res.returncode}): "
                                     f"{res.stdout[-2000:]}{res.stderr[-2000:]}") from None

    def supernodes(self) -> list[dict[str, Any]]:
        """``flwr supernode ls`` as JSON: every SuperNode the SuperLink knows, with its
        ``node-id`` and ``status`` (``registered``, ``online``, ``offline``, ...)."""
        res = self.flwr("supernode", "ls", self.connection, "--format", "json")
        try:
            nodes: list[dict[str, Any]] = json.loads(res.stdout)["nodes"]
        except (ValueError, KeyError):
            raise FlowerProcessError(f"flwr supernode ls failed ({res.returncode}): "
                                     f"{res.stdout[-2000:]}{res.stderr[-2000:]}") from None
        return nodes

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``flwr *args`` with this FLWR_HOME (its connection) and wait for it."""
        return subprocess.run([_bin("flwr"), *args], env=self.env, cwd=self.workdir,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def wait_exit(self, name: str, timeout: float = 60.0) -> int | None:
        """The exit status of the process ``name`` once it ends; None if it outlives
        ``timeout`` seconds (it is left running)."""
        try:
            return self.procs[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

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
            res = self.flwr("ls", self.connection, "--run-id", str(run_id), "--format", "json")
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
