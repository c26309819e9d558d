"""The run directory and the data cache: one writer at a time, damage detected, no partial
files, one-line errors for what the operating system refuses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from interrupt import Stop, stop_after

from fedprune.cli import main
from fedprune.config import from_dict
from fedprune.federated import run_simulation
from fedprune.rundir import RunDir, RunDirBusy, load_checkpoint, save_checkpoint

VOLATILE = {"seconds"}
TINY = {"threads": 1, "data": {"num_clients": 6}, "model": {"widths": [4, 8]},
        "train": {"local_epochs": 1},
        "fed": {"rounds": 4, "clients_per_round": 3, "eval_every": 2},
        "prune": {"method": "boundary", "start_round": 2, "max_prune_round": 3, "interval": 1,
                  "k": 0.5, "max_fraction": 0.3}}
TINY_SETS = ["--set", "threads=1", "--set", "data.num_clients=6", "--set", "model.widths=[4,8]",
             "--set", "train.local_epochs=1", "--set", "fed.clients_per_round=3",
             "--set", "fed.eval_every=2", "--set", "prune.method=boundary"]


def _cfg(**fed):
    return from_dict({**TINY, "fed": {**TINY["fed"], **fed}})


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def _fedprune(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "fedprune", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# ---------------------------------------------------------------- one writer at a time


def test_a_second_writer_of_a_run_directory_fails_at_once(tmp_path):
    out = tmp_path / "run"
    first = _fedprune("run", "--out", str(out), "--no-progress", "--no-plots", *TINY_SETS,
                      "--set", "fed.rounds=400")
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists():  # the first run is under way
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        rows_before = (out / "rounds.jsonl").read_text()
        for args, said in ((["run", "--out", str(out), "--no-progress", *TINY_SETS],
                            "exists and is not empty"),
                           (["run", "--resume", str(out), "--no-progress"],
                            f"in use by another fedprune process (pid {first.pid})")):
            t0 = time.monotonic()
            second = _fedprune(*args)
            _, err = second.communicate(timeout=120)
            assert second.returncode == 2, err
            assert said in err and "Traceback" not in err and time.monotonic() - t0 < 60
        assert first.poll() is None  # the first writer goes on, its records untouched
        assert (out / "rounds.jsonl").read_text().startswith(rows_before)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # the lock went with the killed process: the run resumes
    rows = RunDir(out).read_rounds()
    assert [r["round"] for r in rows] == list(range(1, len(rows) + 1))


def test_a_new_run_racing_one_before_its_first_checkpoint_touches_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    with RunDir(out).lock():  # another process has begun: its config.json is written
        (out / "config.json").write_text(json.dumps(TINY))
        assert main(["run", "--out", str(out), "--no-progress", *TINY_SETS,
                     "--set", "fed.rounds=1"]) == 2
        assert "in use by another fedprune process" in capsys.readouterr().err
        assert json.loads((out / "config.json").read_text()) == TINY  # not cleared


def test_the_lock_is_released_when_a_run_ends_finished_or_not(tmp_path):
    with pytest.raises(Stop):
        run_simulation(_cfg(), tmp_path / "r", on_round=stop_after(2))
    with RunDir(tmp_path / "r").lock():  # nobody holds it now
        with pytest.raises(RunDirBusy, match="in use by another fedprune process"):
            run_simulation(_cfg(), tmp_path / "r", resume=True)
    run_simulation(_cfg(), tmp_path / "r", resume=True)
    assert RunDir(tmp_path / "r").state() == "finished"


# ---------------------------------------------------------------- damage is detected


def _flip_weight_bytes(path: Path, tensor: torch.Tensor, n: int = 64) -> None:
    """Flip ``n`` bytes inside ``tensor``'s data as stored in the checkpoint file (the file
    keeps its size and stays a readable zip)."""
    raw = bytearray(path.read_bytes())
    blob = tensor.detach().contiguous().view(torch.uint8).numpy().tobytes()
    at = raw.find(blob)
    assert at > 0 and len(blob) >= n
    for i in range(at, at + n):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_in_a_checkpoint_is_refused_by_resume_export_and_bench(tmp_path, capsys):
    with pytest.raises(Stop):
        run_simulation(_cfg(), tmp_path / "r", on_round=stop_after(2))
    ckpt = tmp_path / "r" / "checkpoint.pt"
    _, model, _ = load_checkpoint(ckpt)
    size = ckpt.stat().st_size
    _flip_weight_bytes(ckpt, model.state_dict()["features.3.weight"])
    assert ckpt.stat().st_size == size
    assert torch.load(ckpt, weights_only=True)  # torch itself reads it without complaint
    for argv in (["run", "--resume", str(tmp_path / "r"), "--no-progress"],
                 ["export", str(tmp_path / "r"), "--out", str(tmp_path / "m.onnx")],
                 ["bench-latency", str(tmp_path / "r"), "--runs", "1", "--warmup", "0"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "is damaged: its contents do not match the checksum" in err, (argv, err)
    assert not (tmp_path / "m.onnx").exists()


def test_a_model_with_batchnorm_checkpoints_and_resumes_to_the_same_run(tmp_path):
    # BatchNorm's num_batches_tracked is a 0-dim integer tensor: the checksum covers it too
    cfg = from_dict({**TINY, "model": {"name": "tiny_resnet"},
                     "prune": {"start_round": 2, "max_prune_round": 3, "interval": 1}})
    with pytest.raises(Stop):
        run_simulation(cfg, tmp_path / "r", on_round=stop_after(2))
    _, model, _ = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    tracked = [v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")]
    assert tracked and all(v.dim() == 0 and int(v) > 0 for v in tracked)
    resumed = run_simulation(cfg, tmp_path / "r", resume=True)
    whole = run_simulation(cfg, tmp_path / "w")
    assert resumed.summary["accuracy"] == whole.summary["accuracy"]
    assert _strip(RunDir(tmp_path / "r").read_rounds()) == _strip(
        RunDir(tmp_path / "w").read_rounds())
    # and a changed count is refused like any changed weight
    ckpt = tmp_path / "w" / "checkpoint.pt"
    payload = torch.load(ckpt, weights_only=True)
    key = next(k for k in payload["state_dict"] if k.endswith("num_batches_tracked"))
    payload["state_dict"][key] = payload["state_dict"][key] + 1
    torch.save(payload, ckpt)
    with pytest.raises(ValueError, match="do not match the checksum"):
        load_checkpoint(ckpt)


def test_non_finite_weights_in_a_checkpoint_are_refused(tmp_path):
    with pytest.raises(Stop):
        run_simulation(_cfg(), tmp_path / "r", on_round=stop_after(2))
    rd = RunDir(tmp_path / "r")
    spec, model, rnd, state = rd.load_checkpoint(with_state=True)
    with torch.no_grad():
        model.state_dict()["classifier.weight"][0, 0] = float("nan")
    save_checkpoint(rd.checkpoint_file, spec, model, rnd, state)  # a valid checksum
    with pytest.raises(ValueError, match="classifier.weight holds NaN or infinite values"):
        run_simulation(_cfg(), rd.path, resume=True)


def _cache_of(tmp_path, fashion_mnist_dir):
    from fedprune.data import load_federated

    cfg = from_dict({"data": {"name": "fashion-mnist", "path": str(fashion_mnist_dir),
                              "num_clients": 4, "cache_dir": str(tmp_path / "cache")},
                     "fed": {"clients_per_round": 2}})
    load_federated(cfg.data, 0)
    [d] = list((tmp_path / "cache").iterdir())
    return cfg, d


def test_a_changed_byte_or_shuffled_labels_in_the_cache_are_refused(tmp_path, fashion_mnist_dir):
    from fedprune.data import DataError, load_federated

    cfg, d = _cache_of(tmp_path, fashion_mnist_dir)
    images = d / "images.u8"
    raw = bytearray(images.read_bytes())
    raw[1000] ^= 0x01  # one bit, the size unchanged
    images.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="images.u8: has changed since the cache was built"):
        load_federated(cfg.data, 0)
    raw[1000] ^= 0x01
    images.write_bytes(bytes(raw))
    load_federated(cfg.data, 0)  # restored: accepted again

    labels = np.load(d / "labels.npy")
    np.save(d / "labels.npy", np.random.default_rng(0).permutation(labels))
    with pytest.raises(DataError, match="labels.npy: has changed"):
        load_federated(cfg.data, 0)
    rebuilt = from_dict({**cfg.to_dict(), "data": {**cfg.to_dict()["data"], "cache": "rebuild"}})
    load_federated(rebuilt.data, 0)  # the documented way out
    load_federated(cfg.data, 0)


def test_a_cache_of_an_older_version_is_prepared_again(tmp_path, fashion_mnist_dir):
    from fedprune.data import load_federated

    cfg, d = _cache_of(tmp_path, fashion_mnist_dir)
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, "version": 1}))
    load_federated(cfg.data, 0)
    assert json.loads((d / "meta.json").read_text())["version"] == meta["version"]


# ---------------------------------------------------------------- resume at the edges


def test_resume_drops_a_torn_last_line_and_ends_as_an_uninterrupted_run(tmp_path):
    ref = run_simulation(_cfg(), tmp_path / "full")
    with pytest.raises(Stop):
        run_simulation(_cfg(), tmp_path / "cut", on_round=stop_after(2))
    rd = RunDir(tmp_path / "cut")
    # the checkpoint holds round 2; round 3's line was being written when the process died
    third = (tmp_path / "full" / "rounds.jsonl").read_text().splitlines()[2]
    with open(rd.rounds_file, "a") as fh:
        fh.write(third[: len(third) // 2])
    with pytest.raises(ValueError, match="line 3: malformed JSON"):
        rd.read_rounds()  # a reader of finished records still says what is wrong
    res = run_simulation(_cfg(), rd.path, resume=True)
    a, b = ref.model.state_dict(), res.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _strip(RunDir(tmp_path / "full").read_rounds()) == _strip(rd.read_rounds())

    # a record missing below the checkpoint's round is not papered over
    with pytest.raises(Stop):
        run_simulation(_cfg(), tmp_path / "gap", on_round=stop_after(3))
    gap = RunDir(tmp_path / "gap")
    lines = gap.rounds_file.read_text().splitlines(keepends=True)
    gap.rounds_file.write_text(lines[0] + lines[2])
    with pytest.raises(ValueError, match="does not hold the records of rounds 1 to 3"):
        run_simulation(_cfg(), gap.path, resume=True)


def test_missing_records_or_an_altered_loop_state_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(Stop):
        run_simulation(_cfg(), tmp_path / "r", on_round=stop_after(2))
    rd = RunDir(tmp_path / "r")
    spec, model, rnd, state = rd.load_checkpoint(with_state=True)
    rows = rd.rounds_file.read_text()
    rd.rounds_file.unlink()
    assert main(["run", "--resume", str(rd.path), "--no-progress"]) == 2
    assert "holds a checkpoint but no rounds.jsonl" in capsys.readouterr().err
    rd.rounds_file.write_text(rows)
    del state["sample_rng"]  # an altered state, saved with a fresh checksum
    save_checkpoint(rd.checkpoint_file, spec, model, rnd, state)
    assert main(["run", "--resume", str(rd.path), "--no-progress"]) == 2
    assert "its loop state lacks 'sample_rng'" in capsys.readouterr().err


def test_a_budget_refused_before_training_can_be_corrected_in_the_same_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--no-progress", *TINY_SETS, "--set", "fed.rounds=2",
                 "--set", "budget.params_fraction=0.0001"]) == 2
    assert "unreachable" in capsys.readouterr().err
    assert main(["run", "--out", str(out), "--no-progress", "--no-plots", *TINY_SETS,
                 "--set", "fed.rounds=2"]) == 0
    assert RunDir(out).state() == "finished"


# ---------------------------------------------------------------- atomic export


def test_a_failed_export_leaves_nothing_and_the_retry_works(tmp_path, capsys, monkeypatch):
    import fedprune.export.onnx as onnx_mod

    run_simulation(_cfg(rounds=2), tmp_path / "r")
    target = tmp_path / "model.onnx"
    real = onnx_mod.ort_session

    class Off:  # onnxruntime answering wrongly: the parity check fails after the file exists
        def __init__(self, path):
            self.s = real(path)

        def run(self, names, feeds):
            return [o + 1.0 for o in self.s.run(names, feeds)]

    monkeypatch.setattr(onnx_mod, "ort_session", Off)
    assert main(["export", str(tmp_path / "r"), "--out", str(target)]) == 2
    assert "differs from PyTorch" in capsys.readouterr().err
    assert not target.exists() and list(tmp_path.glob(".model*")) == []
    monkeypatch.setattr(onnx_mod, "ort_session", real)
    assert main(["export", str(tmp_path / "r"), "--out", str(target)]) == 0
    assert json.loads(capsys.readouterr().out)["file"] == str(target) and target.stat().st_size
    assert main(["export", str(tmp_path / "r"), "--out", str(target)]) == 2  # never overwrites


# ---------------------------------------------------------------- the operating system says no


def test_an_out_under_a_file_and_unreadable_data_paths_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["run", "--out", str(tmp_path / "afile" / "run"), "--no-progress",
                 *TINY_SETS, "--set", "fed.rounds=1"]) == 2
    err = capsys.readouterr().err
    assert "afile" in err and "not a folder" in err and "Traceback" not in err
    os.mkfifo(tmp_path / "fifo")
    for path in (tmp_path / "fifo", Path("/dev/null")):
        assert main(["run", "--out", str(tmp_path / "x"), "--no-progress", "--set",
                     "data.name=fashion-mnist", "--set", f"data.path={path}"]) == 2
        assert "neither a regular file nor a folder" in capsys.readouterr().err


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                              capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    where = tmp_path / "small"
    if shutil.which("mount") is None or not _mount_tmpfs(where, "size=48k"):
        pytest.skip("mounting a small tmpfs needs root (mount -t tmpfs) on this machine")
    yield where
    subprocess.run(["umount", str(where)], capture_output=True, timeout=20)


def test_a_full_disk_is_one_line_and_leaves_no_partial_checkpoint(small_disk, tmp_path):
    out = small_disk / "run"
    done = subprocess.run([sys.executable, "-m", "fedprune", "run", "--out", str(out),
                           "--no-progress", "--no-plots", *TINY_SETS, "--set",
                           "model.widths=[32,64]", "--set", "fed.rounds=3"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "No space left on device" in done.stderr and "the disk is full" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 3
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    rows = out / "rounds.jsonl"
    if rows.exists():  # whatever was written is whole lines
        assert rows.read_text() == "" or rows.read_text().endswith("\n")


def test_a_read_only_target_is_one_line(tmp_path):
    where = tmp_path / "ro"
    if shutil.which("mount") is None or not _mount_tmpfs(where, "size=1m,ro"):
        pytest.skip("mounting a read-only tmpfs needs root (mount -t tmpfs) on this machine")
    try:
        done = subprocess.run([sys.executable, "-m", "fedprune", "run", "--out",
                               str(where / "run"), "--no-progress", *TINY_SETS, "--set",
                               "fed.rounds=1"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "Read-only file system" in done.stderr and "read-only" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        subprocess.run(["umount", str(where)], capture_output=True, timeout=20)


# ---------------------------------------------------------------- small edges


def test_a_seed_beyond_64_bits_is_a_config_error_naming_the_key(capsys):
    assert main(["config", "--set", "seed=99999999999999999999999999"]) == 2
    err = capsys.readouterr().err
    assert "seed = 99999999999999999999999999 is out of range" in err


def test_a_small_gzip_idx_that_inflates_far_beyond_its_header_fails_without_inflating(tmp_path):
    import gzip
    import tracemalloc

    from fedprune.data import DataError
    from fedprune.data.formats.idx import read_idx_file

    path = tmp_path / "train-images-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + np.array([10, 28, 28], dtype=">u4").tobytes()
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(header + bytes(10 * 28 * 28))
        block = bytes(1 << 20)
        for _ in range(64):  # 64 MB more than the header says
            fh.write(block)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="longer than its header says"):
            read_idx_file(path, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # it read what the header announced, and one byte more


# ---------------------------------------------------------------- hostile edits


def _stopped_run(tmp_path: Path, name: str = "r") -> RunDir:
    with pytest.raises(Stop):
        run_simulation(_cfg(), tmp_path / name, on_round=stop_after(2))
    return RunDir(tmp_path / name)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedprune: error: "), err
    return lines[0]


def _reading_commands(rd: RunDir, out: Path) -> list[list[str]]:
    return [["run", "--resume", str(rd.path), "--no-progress", "--no-plots"],
            ["export", str(rd.path), "--out", str(out)],
            ["bench-latency", str(rd.path), "--runs", "1", "--warmup", "0"]]


def test_a_checkpoint_without_its_checksum_is_refused_unless_allowed(tmp_path, capsys, caplog):
    from fedprune.checkpoint import DIGEST_KEY

    rd = _stopped_run(tmp_path)
    payload = torch.load(rd.checkpoint_file, weights_only=True)
    del payload[DIGEST_KEY]  # no checksum left to disagree with the edit below
    payload["state_dict"]["classifier.weight"] += 1.0
    torch.save(payload, rd.checkpoint_file)
    with pytest.raises(ValueError, match="carries no checksum"):
        load_checkpoint(rd.checkpoint_file)
    for argv in _reading_commands(rd, tmp_path / "m.onnx"):
        assert main(argv) == 2, argv
        line = _one_line_error(capsys)
        assert f"checkpoint {rd.checkpoint_file} carries no checksum" in line, line
        assert "cannot be verified" in line and "--allow-unverified-checkpoint" in line, line
    assert not (tmp_path / "m.onnx").exists() and rd.state() == "resumable"
    assert main(["run", "--out", str(tmp_path / "new"), "--allow-unverified-checkpoint",
                 *TINY_SETS]) == 2  # a new run reads no checkpoint: the flag is a mistake
    assert "applies to --resume only" in _one_line_error(capsys)

    # allowed explicitly: read, with a warning, by the library and every command
    _, model, _ = load_checkpoint(rd.checkpoint_file, allow_unverified=True)
    assert torch.equal(model.state_dict()["classifier.weight"],
                       payload["state_dict"]["classifier.weight"])
    for argv in _reading_commands(rd, tmp_path / "m.onnx")[1:]:
        caplog.clear()
        assert main([*argv, "--allow-unverified-checkpoint"]) == 0, capsys.readouterr().err
        assert "carries no checksum" in caplog.text and "without verifying" in caplog.text
    assert (tmp_path / "m.onnx").stat().st_size
    assert main([*_reading_commands(rd, tmp_path / "m.onnx")[0],
                 "--allow-unverified-checkpoint"]) == 0
    assert rd.state() == "finished"
    # the checkpoints the resumed run wrote carry their checksum again: read with no flag
    assert main(["export", str(rd.path), "--out", str(tmp_path / "again.onnx")]) == 0
    assert DIGEST_KEY in torch.load(rd.checkpoint_file, weights_only=True)


@pytest.mark.parametrize(("key", "value", "said"), [
    ("num_classes", 10**9, "num_classes must be an integer from 1 to 100,000, got 1000000000"),
    ("in_channels", 10**6, "in_channels must be an integer from 1 to 64"),
    ("image_size", 10**6, "image_size must be an integer from 1 to 4,096"),
    ("widths", [4, 2**40], "widths[1] must be an integer from 1 to 65,536"),
    ("widths", [65_536, 65_536], "more than the bound of 268,435,456"),
])
def test_a_resealed_checkpoint_claiming_huge_sizes_is_refused_before_building(
        tmp_path, capsys, key, value, said):
    from fedprune.checkpoint import DIGEST_KEY, payload_digest

    rd = _stopped_run(tmp_path)
    payload = torch.load(rd.checkpoint_file, weights_only=True)
    spec = json.loads(payload["spec"])
    payload["spec"] = json.dumps({**spec, key: value})
    payload[DIGEST_KEY] = payload_digest(payload)  # resealed: the checksum matches
    torch.save(payload, rd.checkpoint_file)
    for argv in _reading_commands(rd, tmp_path / "m.onnx"):
        assert main(argv) == 2, argv
        line = _one_line_error(capsys)
        assert f"checkpoint {rd.checkpoint_file}: model spec: " in line and said in line, line
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(("key", "value"), [
    ("num_classes", 0), ("num_classes", 100_001), ("num_classes", True), ("num_classes", "62"),
    ("in_channels", 65), ("image_size", 4097), ("widths", []), ("widths", [4, "8"]),
    ("widths", [4, 0]), ("widths", "4,8"), ("record", []), ("name", "no_such_model"),
])
def test_a_model_spec_out_of_bounds_is_a_value_error_naming_the_field(key, value):
    from fedprune.models import ModelSpec, new_model

    _, spec = new_model("cnn_femnist", num_classes=62, in_channels=1, image_size=28,
                        widths=[4, 8], seed=0)
    assert ModelSpec.from_json(spec.to_json()) == spec
    field = "model" if key == "name" else key
    with pytest.raises(ValueError, match=field):
        ModelSpec.from_json(json.dumps({**json.loads(spec.to_json()), key: value}))


@pytest.mark.parametrize(("key", "value", "said"), [
    ("name", "resnet7", "with model.name 'cnn_femnist' but config.json gives 'resnet7'"),
    ("widths", [4, 9], "with model.widths [4, 8] but config.json gives [4, 9]"),
])
def test_a_config_json_edited_to_another_model_is_refused_on_resume(tmp_path, capsys, key,
                                                                    value, said):
    rd = _stopped_run(tmp_path)
    config = json.loads(rd.config_file.read_text())
    config["model"] = {**config["model"], key: value, **({"widths": None} if key == "name"
                                                          else {})}
    rd.config_file.write_text(json.dumps(config))
    rows = rd.rounds_file.read_text()
    assert main(["run", "--resume", str(rd.path), "--no-progress", "--no-plots"]) == 2
    line = _one_line_error(capsys)
    assert f"cannot resume {rd.path}: checkpoint.pt holds a model " in line, line
    assert said in line and "not of the same run" in line, line
    assert rd.state() == "resumable" and rd.rounds_file.read_text() == rows  # untouched


def test_a_checkpoint_of_other_data_is_refused_on_resume(tmp_path):
    import dataclasses

    rd = _stopped_run(tmp_path)
    spec, *_ = rd.load_resume_point()  # the run's own configuration: accepted
    for key, value in (("num_classes", 3), ("in_channels", 3), ("image_size", 32)):
        other = dataclasses.replace(spec, **{key: value})
        with pytest.raises(ValueError, match=f"holds a model with {key} "):
            rd.load_resume_point(expected=other)


def _reseal(meta: dict) -> dict:
    from fedprune.data.cache import META_DIGEST_KEY, _meta_digest

    return {**meta, META_DIGEST_KEY: _meta_digest(meta)}


def test_an_edited_cache_meta_json_is_refused_as_damaged(tmp_path, fashion_mnist_dir, capsys):
    from fedprune.data import DataError, load_federated
    from fedprune.data.cache import META_DIGEST_KEY

    cfg, d = _cache_of(tmp_path, fashion_mnist_dir)
    where = d / "meta.json"
    honest = json.loads(where.read_text())
    assert honest[META_DIGEST_KEY] == _reseal(honest)[META_DIGEST_KEY]
    data_info = ["data", "info", "fashion-mnist", "--set", f"data.path={fashion_mnist_dir}",
                 "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "data.num_clients=4"]
    no_samples = {k: v for k, v in honest.items() if k != "num_samples"}
    unsealed = {k: v for k, v in honest.items() if k != META_DIGEST_KEY}
    for meta, said in (
            ({**honest, "num_classes": 3}, "meta.json: has changed since the cache was built"),
            (no_samples, "meta.json: has changed since the cache was built"),
            ({**honest, "mean": ["x"]}, "meta.json: has changed since the cache was built"),
            (unsealed, f"meta.json: carries no {META_DIGEST_KEY}"),
            # edited and resealed: each field is checked before it is used
            (_reseal({**honest, "num_classes": 3}),
             "labels.npy: holds values outside 0..2 (num_classes in meta.json)"),
            (_reseal(no_samples), "meta.json: num_samples must be an integer >= 1, got None"),
            (_reseal({**honest, "mean": ["x"]}),
             "meta.json: mean must list one number per channel (1), each from 0 to 1, got ['x']"),
            (_reseal({**honest, "std": [0.3, 0.2]}), "meta.json: std must list one number per"),
            (_reseal({**honest, "shape": [1, 28, "28"]}), "meta.json: shape must be"),
            (_reseal({**honest, "num_classes": 10**12}), "meta.json: num_classes must be"),
            (_reseal({**honest, "files": [["a", "b"]]}), "meta.json: files must list")):
        where.write_text(json.dumps(meta))
        with pytest.raises(DataError, match="damaged") as err:
            load_federated(cfg.data, 0)
        assert said in str(err.value) and "data.cache=rebuild" in str(err.value), err.value
        assert main(data_info) == 2
        line = _one_line_error(capsys)
        assert said in line and str(d) in line, line
    where.write_text(json.dumps(honest))
    load_federated(cfg.data, 0)  # restored: accepted again


def test_a_cache_whose_meta_json_has_no_checksum_of_its_own_is_prepared_again(
        tmp_path, fashion_mnist_dir):
    from fedprune.data import load_federated
    from fedprune.data.cache import CACHE_VERSION, META_DIGEST_KEY

    cfg, d = _cache_of(tmp_path, fashion_mnist_dir)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["version"] == CACHE_VERSION and meta[META_DIGEST_KEY]
    # what the version before meta.json's checksum wrote: rebuilt, not trusted
    old = {k: v for k, v in meta.items() if k != META_DIGEST_KEY}
    (d / "meta.json").write_text(json.dumps({**old, "version": 2, "num_classes": 3}))
    load_federated(cfg.data, 0)
    again = json.loads((d / "meta.json").read_text())
    volatile = {"seconds_to_build", META_DIGEST_KEY}
    assert {k: v for k, v in again.items() if k not in volatile} == {
        k: v for k, v in meta.items() if k not in volatile}
    assert again[META_DIGEST_KEY] == _reseal(again)[META_DIGEST_KEY]


def test_an_export_to_a_full_disk_names_its_file_and_leaves_nothing(small_disk, tmp_path,
                                                                     capsys):
    cfg = from_dict({**TINY, "model": {"widths": [32, 64]},
                     "fed": {**TINY["fed"], "rounds": 1}, "prune": {"enabled": False}})
    run_simulation(cfg, tmp_path / "r")
    target = small_disk / "model.onnx"  # larger than the 48 kB the disk holds
    assert main(["export", str(tmp_path / "r"), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"{target}: No space left on device" in err and len(err.strip().splitlines()) == 1
    assert list(small_disk.iterdir()) == []
