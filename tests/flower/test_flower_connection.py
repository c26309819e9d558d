"""The documented step that points ``flwr`` at a local SuperLink: repeatable, and a repair.

``python -m fedprune.flower set-connection NAME ADDRESS`` adds or replaces
``[superlink.NAME]`` in Flower's config file.  Appending the table with ``cat >>`` (the way
the step used to be written) breaks every ``flwr`` command the second time; the command
gives the same, valid file however often it runs, and repairs a file that has the table
twice.  Every test uses a private ``FLWR_HOME`` and checks the file with the real ``flwr``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from fedprune.flower.connection import flwr_config_path, set_connection

BIN = Path(sys.executable).parent
TABLE = '\n[superlink.local-deployment]\naddress = "127.0.0.1:9091"\ninsecure = true\n'


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0"}


def _flwr_config_ls(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "flwr"), "config", "ls"], env=_env(home),
                          capture_output=True, text=True, timeout=120, check=False)


def _set_connection(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedprune.flower",
                           "set-connection", *args], env=_env(home), capture_output=True,
                          text=True, timeout=120, check=False)


def test_flwr_finds_its_config_in_flwr_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "h"))
    assert flwr_config_path() == tmp_path / "h" / "config.toml"
    monkeypatch.delenv("FLWR_HOME")
    assert flwr_config_path() == Path.home() / ".flwr" / "config.toml"


def test_set_connection_twice_gives_one_table_that_flwr_reads(tmp_path):
    home = tmp_path / "flwr-home"
    for _ in range(2):
        res = _set_connection(home, "local-deployment", "127.0.0.1:9091")
        assert res.returncode == 0, res.stderr
    text = (home / "config.toml").read_text()
    assert text.count("[superlink.local-deployment]") == 1
    doc = tomllib.loads(text)
    assert doc["superlink"]["local-deployment"] == {"address": "127.0.0.1:9091",
                                                    "insecure": True}
    assert doc["superlink"]["default"] == "local" and "local" in doc["superlink"]  # Flower's
    ls = _flwr_config_ls(home)
    assert ls.returncode == 0, ls.stdout + ls.stderr
    assert "local-deployment" in ls.stdout


def test_appending_the_table_twice_breaks_flwr_and_set_connection_repairs_it(tmp_path):
    home = tmp_path / "flwr-home"
    assert _flwr_config_ls(home).returncode == 0  # creates Flower's default file
    cfg = home / "config.toml"
    cfg.write_text(cfg.read_text() + "# my comment\n" + TABLE + TABLE)  # the step, done twice
    broken = _flwr_config_ls(home)
    assert broken.returncode != 0
    assert "Failed to read the Flower configuration file" in broken.stdout + broken.stderr

    res = _set_connection(home, "local-deployment", "127.0.0.1:9092")  # a new port, too
    assert res.returncode == 0, res.stderr
    text = cfg.read_text()
    assert text.count("[superlink.local-deployment]") == 1 and "# my comment" in text
    assert tomllib.loads(text)["superlink"]["local-deployment"]["address"] == "127.0.0.1:9092"
    assert _flwr_config_ls(home).returncode == 0


def test_other_tables_are_kept_and_bad_input_is_refused(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[superlink]\ndefault = "mine"\n\n[superlink.mine]\naddress = "h:1"\n'
                    '[superlink.mine.options]\nnum-supernodes = 3\n\n'
                    '[superlink.local-deployment]\naddress = "old:1"\n'
                    '[superlink.local-deployment.options]\nnum-supernodes = 2\n')
    set_connection("local-deployment", "127.0.0.1:9091", path=path)
    doc = tomllib.loads(path.read_text())
    assert doc["superlink"]["mine"] == {"address": "h:1", "options": {"num-supernodes": 3}}
    assert doc["superlink"]["local-deployment"] == {"address": "127.0.0.1:9091",
                                                    "insecure": True}
    with pytest.raises(ValueError, match="connection name"):
        set_connection("bad name", "127.0.0.1:9091", path=path)
    path.write_text("[superlink\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        set_connection("local-deployment", "127.0.0.1:9091", path=path)
    assert path.read_text() == "[superlink\n"  # left alone


def test_root_certificates_give_a_tls_connection_that_flwr_reads(tmp_path):
    home = tmp_path / "flwr-home"
    ca = tmp_path / "certs" / "ca.crt"
    ca.parent.mkdir()
    ca.write_text("-----BEGIN CERTIFICATE-----\n")  # read by flwr only when it connects
    res = _set_connection(home, "secure-deployment", "127.0.0.1:9091",
                          "--root-certificates", "certs/ca.crt")
    assert res.returncode != 0 and "no such file" in res.stderr  # relative to the cwd
    res = subprocess.run([sys.executable, "-m", "fedprune.flower", "set-connection",
                          "secure-deployment", "127.0.0.1:9091", "--root-certificates",
                          "certs/ca.crt"], env=_env(home), cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    doc = tomllib.loads((home / "config.toml").read_text())
    assert doc["superlink"]["secure-deployment"] == {"address": "127.0.0.1:9091",
                                                     "root-certificates": str(ca)}
    ls = _flwr_config_ls(home)
    assert ls.returncode == 0, ls.stdout + ls.stderr
    assert "secure-deployment" in ls.stdout

    # the same connection made insecure again: one table, no root-certificates left over
    set_connection("secure-deployment", "127.0.0.1:9091", path=home / "config.toml")
    assert tomllib.loads((home / "config.toml").read_text())["superlink"][
        "secure-deployment"] == {"address": "127.0.0.1:9091", "insecure": True}
    with pytest.raises(ValueError, match="not insecure=True"):
        set_connection("secure-deployment", "127.0.0.1:9091", insecure=True,
                       root_certificates=ca, path=home / "config.toml")
    both = _set_connection(home, "x", "127.0.0.1:9091", "--secure",
                           "--root-certificates", str(ca))
    assert both.returncode != 0 and "not allowed with" in both.stderr
