"""A secure deployment for real: TLS and SuperNode authentication, as docs/flower.md sets
them up.

``scripts/make_certs.sh`` makes a CA, the SuperLink's certificate for 127.0.0.1 and three
SuperNode key pairs.  A ``flower-superlink`` serves TLS with ``--enable-supernode-auth``;
two of the keys are registered (``flwr supernode register``) and their SuperNodes, which
check the SuperLink's certificate against the CA, run a short fedprune job submitted with
``flwr run`` over TLS (the connection's ``root-certificates``).  Four other SuperNodes try
to join and must not:

* one with the third key, never registered: the SuperLink refuses to activate it;
* one with no key (it asks to register itself, as every SuperNode does without
  authentication -- it would join if authentication were off): refused;
* one without the CA: its TLS handshake fails on the SuperLink's certificate;
* one with ``--insecure`` (plain HTTP): never gets through.

The run must complete with the two registered nodes' replies in every round, and the
SuperLink must know exactly those two nodes.  Every process started is shut down by pid.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="flwr (the Flower extra) is not installed")
if shutil.which("openssl") is None:
    pytest.skip("openssl is not on PATH (scripts/make_certs.sh needs it)",
                allow_module_level=True)

from cryptography.hazmat.primitives import serialization
from flower_harness import LocalFlower, TLSFiles

from fedprune.config import from_dict
from fedprune.flower.run_config import experiment_to_run_config
from fedprune.metrics import read_rounds

pytestmark = pytest.mark.slow

MAKE_CERTS = Path(__file__).resolve().parents[2] / "scripts" / "make_certs.sh"
CFG = from_dict({
    "threads": 1,
    "data": {"num_clients": 2, "max_test_samples": 200},
    "model": {"widths": [4, 8]},
    "train": {"local_epochs": 1, "engine": "per_client"},
    "fed": {"rounds": 2, "clients_per_round": 2, "eval_every": 2},
    "prune": {"method": "boundary", "start_round": 1, "max_prune_round": 2, "interval": 1,
              "k": 0.5, "max_fraction": 0.5},
})
RUN_TIMEOUT = 240  # seconds for the `flwr run`
REFUSED = "Exit Code: 305"  # flower-supernode could not connect to the SuperLink (flwr 1.41)


def _make_certs(out: Path, nodes: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(MAKE_CERTS), *args, str(out), str(nodes)],
                          capture_output=True, text=True, timeout=60, check=False)


def _pem(public_key_file: Path) -> str:
    """The public key as the SuperLink's log writes it (PEM, SubjectPublicKeyInfo)."""
    key = serialization.load_ssh_public_key(public_key_file.read_bytes())
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _log(lf: LocalFlower, name: str) -> str:
    return lf.logs[name].read_text(errors="replace")


def test_make_certs_refuses_to_overwrite_and_keeps_keys_private(tmp_path):
    certs = tmp_path / "certs"
    res = _make_certs(certs, 2)
    assert res.returncode == 0, res.stderr
    assert all(name in res.stdout for name in ("ca.crt", "server.crt", "server.key", "node-2"))
    private = ["ca.key", "server.key", "nodes/node-1", "nodes/node-2"]
    for name in private:
        assert stat.S_IMODE((certs / name).stat().st_mode) == 0o600, name
    assert (certs / "nodes" / "node-1").read_text().startswith(
        "-----BEGIN OPENSSH PRIVATE KEY-----")
    assert (certs / "nodes" / "node-1.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    text = subprocess.run(["openssl", "x509", "-in", str(certs / "server.crt"), "-noout",
                           "-ext", "subjectAltName"], capture_output=True, text=True,
                          check=True).stdout
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text
    subprocess.run(["openssl", "verify", "-CAfile", str(certs / "ca.crt"),
                    str(certs / "server.crt")], capture_output=True, check=True)

    before = {name: (certs / name).read_bytes() for name in private}
    again = _make_certs(certs, 2)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr
    assert {name: (certs / name).read_bytes() for name in private} == before
    forced = _make_certs(certs, 2, "--force")
    assert forced.returncode == 0, forced.stderr
    assert all((certs / name).read_bytes() != before[name] for name in private)


@pytest.fixture
def certs(tmp_path):
    out = tmp_path / "certs"
    res = _make_certs(out, 3)
    assert res.returncode == 0, res.stderr
    return out


def test_tls_and_supernode_auth_admit_only_registered_nodes(certs, tmp_path):
    out = tmp_path / "run"
    with LocalFlower(tmp_path / "flower", tls=TLSFiles.from_dir(certs)) as lf:
        lf.start_superlink(supernode_auth=True)
        ids = [lf.register_supernode(certs / "nodes" / f"node-{i}.pub") for i in (1, 2)]
        assert len(set(ids)) == 2
        for pid, i in ((0, 1), (1, 2)):
            lf.start_supernode(pid, 2, auth_key=certs / "nodes" / f"node-{i}")
        # the ones that must stay out; each would serve partition 0 or 1
        lf.start_supernode(0, 2, name="unregistered", auth_key=certs / "nodes" / "node-3")
        lf.start_supernode(1, 2, name="keyless")
        lf.start_supernode(0, 2, name="no-ca", transport="system-ca")
        lf.start_supernode(1, 2, name="insecure", transport="insecure",
                           extra_args=["--max-retries", "2"])

        proc = lf.submit({**experiment_to_run_config(CFG), "out-dir": str(out),
                          "plots": False, "round-timeout": 120.0, "min-nodes": 2,
                          "node-wait-timeout": 120.0})
        try:
            # refused at once: each exits (status 1) with flower-supernode's connection error
            outsiders = ("unregistered", "keyless", "no-ca", "insecure")
            codes = {name: lf.wait_exit(name, 90) for name in outsiders}
            assert codes == dict.fromkeys(outsiders, 1), (
                codes, {n: lf.log_tail(n, 15) for n in outsiders})
            assert all(REFUSED in _log(lf, n) for n in outsiders), {
                n: lf.log_tail(n, 15) for n in outsiders}
            assert "[code: 2004] Failed to activate SuperNode." in _log(lf, "unregistered")
            assert ("[code: 2001] SuperNode authentication is enabled"
                    in _log(lf, "keyless"))
            assert "CERTIFICATE_VERIFY_FAILED" in _log(lf, "no-ca")
            assert "Server disconnected without sending a response" in _log(lf, "insecure")
            assert "SuperNode ID:" not in "".join(_log(lf, n) for n in outsiders)

            proc.wait(timeout=RUN_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, lf.log_tail("flwr-run", 80)
        started = re.search(r"Successfully started run (\d+)", _log(lf, "flwr-run"))
        assert started, lf.log_tail("flwr-run", 80)
        assert lf.run_info(int(started.group(1)))["status"] == "finished:completed"

        # the SuperLink's side: the unregistered key and the keyless node refused, by key
        link = _log(lf, "superlink")
        refused = [line for line in link.splitlines()
                   if "[/v1/fleet/activate-node][ApiError:2004]" in line]
        third_key = repr(_pem(certs / "nodes" / "node-3.pub").encode())  # as logged
        assert any(third_key in line for line in refused), link[-4000:]
        assert "[/v1/fleet/register-node][ApiError:2001]" in link
        for i, node_id in enumerate(ids):
            assert f"SuperNode ID: {node_id}" in _log(lf, f"supernode-{i}")
        # it knows the two registered nodes and no other (a keyless node admitted without
        # authentication would be listed online)
        nodes = {int(n["node-id"]): n["status"] for n in lf.supernodes()}
        assert nodes == dict.fromkeys(ids, "online"), nodes
    assert lf.pids() == [], "Flower processes left running"

    summary = json.loads((out / "summary.json").read_text())
    rows = read_rounds(out)
    assert summary["status"] == "completed"
    assert [r["round"] for r in rows] == [1, 2] and [r["clients"] for r in rows] == [2, 2]
    assert summary["replies_per_round"] == [2, 2] and summary["failures_total"] == 0
    assert (out / "checkpoint.pt").is_file()
