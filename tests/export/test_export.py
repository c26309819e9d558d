"""ONNX export of the paper's architectures, dense and pruned, with onnxruntime parity."""

import numpy as np
import pytest
import torch

from fedprune.export import ATOL, ExportError, bench_onnx_latency, export_onnx, ort_session
from fedprune.metrics.latency import measure_interleaved
from fedprune.models import model_defaults, new_model
from fedprune.pruning import BoundaryRule, prune_model

PAPER_MODELS = ["cnn_femnist", "cnn_celeba", "resnet7", "inception"]


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_MODELS)
@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
def test_export_runs_in_onnxruntime_with_parity(name, pruned, tmp_path):
    d = model_defaults(name)
    model, spec = new_model(name, num_classes=7, in_channels=d["in_channels"],
                            image_size=d["image_size"], widths=None, seed=0)
    x = spec.example_input()
    if pruned:
        res = prune_model(model, x, BoundaryRule(k=0.5, mode="both", max_fraction=0.2))
        assert res.n_removed > 0
    report = export_onnx(model, x, tmp_path / "m.onnx")
    assert report.bytes > 0 and report.max_abs_diff <= ATOL
    # a batch of another size runs too (dynamic batch axis), matching PyTorch
    xb = torch.randn(3, *x.shape[1:])
    got = ort_session(report.path).run(["logits"], {"input": xb.numpy()})[0]
    with torch.no_grad():
        ref = model.eval()(xb).numpy()
    assert got.shape == (3, 7)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)


def test_parity_failure_is_reported(tmp_path, monkeypatch):
    """A runtime that disagrees with PyTorch makes the export fail loudly."""
    model, spec = new_model("cnn_femnist", num_classes=3, in_channels=1, image_size=28,
                            widths=[2, 4], seed=0)
    import fedprune.export.onnx as mod

    class Skewed:
        def __init__(self, inner):
            self.inner = inner

        def run(self, names, feeds):
            return [self.inner.run(names, feeds)[0] + 1e-2]

    real = mod.ort_session
    monkeypatch.setattr(mod, "ort_session", lambda p, threads=1: Skewed(real(p, threads)))
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(model, spec.example_input(), tmp_path / "m.onnx")


def test_interleaved_latency_counts_orders_and_summarises(monkeypatch):
    """A fake clock: runner "a" costs 1 ms, "b" 3 ms; the order alternates every turn."""
    import fedprune.metrics.latency as lat

    clock = [0.0]
    calls: list[str] = []

    def runner(name, cost_s):
        def run():
            calls.append(name)
            clock[0] += cost_s
        return run

    monkeypatch.setattr(lat.time, "perf_counter", lambda: clock[0])
    stats = measure_interleaved({"a": runner("a", 1e-3), "b": runner("b", 3e-3)},
                                warmup=2, runs=5)
    assert calls[:4] == ["a", "b", "a", "b"]  # warm-up
    assert calls[4:] == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    assert stats["a"].median_ms == pytest.approx(1.0) and stats["b"].p90_ms == pytest.approx(3.0)
    assert stats["a"].runs == 5
    with pytest.raises(ValueError):
        measure_interleaved({}, runs=1)


def test_bench_exports_and_times_each_model():
    dense, spec = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                            widths=None, seed=0)
    narrow, _ = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                          widths=[4, 8], seed=0)
    rows = bench_onnx_latency({"dense": dense, "narrow": narrow}, spec.example_input(),
                              runs=40, warmup=5)
    assert rows[0].speedup_vs_first == pytest.approx(1.0)
    assert rows[1].flops < rows[0].flops / 10
    assert rows[1].speedup_vs_first > 0 and rows[1].stats.runs == 40
    assert rows[1].file_bytes < rows[0].file_bytes


@pytest.mark.slow
def test_export_and_bench_latency_commands_on_a_real_run(tmp_path, capsys):
    import json

    from fedprune.cli import main
    from fedprune.config import from_dict
    from fedprune.federated import run_simulation

    cfg = from_dict({"threads": 1, "data": {"num_clients": 4},
                     "model": {"widths": [8, 16]}, "train": {"local_epochs": 1},
                     "fed": {"rounds": 4, "clients_per_round": 2, "eval_every": 4},
                     "prune": {"method": "boundary", "start_round": 2, "max_prune_round": 3,
                               "interval": 1, "k": 0.5, "max_fraction": 0.5}})
    run_simulation(cfg, tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "p.onnx")]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert main(["export", str(tmp_path / "run"), "--initial", "--out",
                 str(tmp_path / "d.onnx")]) == 0
    dense = json.loads(capsys.readouterr().out)
    assert pruned["bytes"] < dense["bytes"] and pruned["input"]["shape"] == [1, 1, 28, 28]
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "p.onnx")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["bench-latency", str(tmp_path / "run"), "--runs", "20", "--warmup", "2",
                 "--json", str(tmp_path / "lat.json")]) == 0
    assert "dense/pruned median latency ratio" in capsys.readouterr().out
    rows = json.loads((tmp_path / "lat.json").read_text())[0]["rows"]
    assert [r["name"] for r in rows] == ["dense (initial)", "pruned (final)"]
    assert rows[1]["flops"] < rows[0]["flops"] and rows[0]["median_ms"] > 0
    assert main(["export", str(tmp_path / "missing")] + ["--out", "x.onnx"]) == 2


def test_bench_latency_writes_a_latency_table_the_budget_can_use(tmp_path, capsys):
    import json

    from fedprune.cli import main
    from fedprune.pruning.budget import LatencyTable

    out = tmp_path / "table.json"
    assert main(["bench-latency", "--table", str(out), "--model", "cnn_femnist",
                 "--fractions", "1,0.5,0.25", "--runs", "5", "--warmup", "1"]) == 0
    doc = json.loads(out.read_text())
    assert doc["model"] == "cnn_femnist" and doc["input_shape"] == [1, 28, 28]
    assert [r["widths"] for r in doc["rows"]] == [[32, 64], [16, 32], [8, 16]]
    assert all(r["latency_ms"] > 0 for r in doc["rows"])
    assert doc["rows"][0]["flops"] > doc["rows"][1]["flops"] > doc["rows"][2]["flops"]
    table = LatencyTable.load(out)
    assert table.estimate(doc["rows"][1]["flops"]) == pytest.approx(doc["rows"][1]["latency_ms"])
    assert main(["bench-latency", "--table", str(out)]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err


# ----------------------------------------------------------------------------- format of --out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from fedprune.config import from_dict
    from fedprune.federated import run_simulation

    cfg = from_dict({"threads": 1, "data": {"num_clients": 4},
                     "model": {"widths": [4, 8]}, "train": {"local_epochs": 1},
                     "fed": {"rounds": 3, "clients_per_round": 2, "eval_every": 3},
                     "prune": {"start_round": 2, "max_prune_round": 3, "interval": 1,
                               "k": 0.5, "max_fraction": 0.5}})
    run_dir = tmp_path_factory.mktemp("export") / "run"
    run_simulation(cfg, run_dir)
    return run_dir


@pytest.mark.parametrize(("out", "fmt", "expected"), [
    ("m.onnx", None, "onnx"), ("m.pte", None, "executorch"), ("M.ONNX", None, "onnx"),
    ("m.onnx", "onnx", "onnx"), ("m.pte", "executorch", "executorch"),
    ("m.bin", "onnx", "onnx"), ("model", "executorch", "executorch"),
])
def test_export_format_follows_the_extension(out, fmt, expected):
    from pathlib import Path

    from fedprune.export.commands import export_format

    assert export_format(Path(out), fmt) == expected


@pytest.mark.parametrize(("out", "fmt", "message"), [
    ("m.pte", "onnx", r"--format onnx writes an ONNX model, but --out m.pte has the extension "
                      r"of an ExecuTorch program: use --out m.onnx, or drop --format"),
    ("y.onnx", "executorch", r"--format executorch writes an ExecuTorch program, but --out "
                             r"y.onnx .*use --out y.pte"),
    ("m.bin", None, r"cannot tell the format from the extension '.bin': name the file .onnx "
                    r"\(onnx\) or .pte \(executorch\), or give --format"),
    ("model", None, r"a name without extension"),
])
def test_export_format_refuses_a_mismatch_or_an_unknown_extension(out, fmt, message):
    from pathlib import Path

    from fedprune.export.commands import export_format

    with pytest.raises(ValueError, match=message):
        export_format(Path(out), fmt)


@pytest.mark.parametrize(("name", "fmt"), [("y.onnx", "executorch"), ("x.pte", "onnx"),
                                           ("x.bin", None)])
def test_export_command_writes_nothing_on_a_format_mismatch(tiny_run, tmp_path, capsys, name,
                                                            fmt):
    from fedprune.cli import main

    out = tmp_path / name
    rc = main(["export", str(tiny_run), "--out", str(out),
               *(["--format", fmt] if fmt else [])])

    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    assert captured.err.startswith("fedprune: error: ") and "--format" in captured.err
    assert not out.exists()


def test_export_command_writes_onnx_for_onnx_names(tiny_run, tmp_path, capsys):
    import json

    import onnx

    from fedprune.cli import main

    for name, extra in (("m.onnx", []), ("m.bin", ["--format", "onnx"])):
        assert main(["export", str(tiny_run), "--out", str(tmp_path / name), *extra]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["format"] == "onnx" and printed["file"] == str(tmp_path / name)
        onnx.checker.check_model(onnx.load(str(tmp_path / name)))  # a real ONNX file


@pytest.mark.slow
def test_export_command_writes_executorch_for_pte_names(tiny_run, tmp_path, capsys):
    import json

    from fedprune.cli import main

    pytest.importorskip("executorch.runtime")
    out = tmp_path / "m.pte"
    assert main(["export", str(tiny_run), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["format"] == "executorch" and printed["max_abs_diff_vs_pytorch"] <= ATOL
    assert out.read_bytes()[4:8] == b"ET12"  # the ExecuTorch program's file identifier


def test_export_command_without_executorch_says_how_to_install(tiny_run, tmp_path, capsys,
                                                               monkeypatch):
    import sys

    from fedprune.cli import main

    monkeypatch.setitem(sys.modules, "executorch", None)  # import executorch -> ImportError
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "m.pte")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedprune: error: ExecuTorch is not installed")
    assert "pip install 'fedprune[executorch]'" in err and not (tmp_path / "m.pte").exists()


def test_bench_latency_save_needs_a_run_and_checks_before_timing(tiny_run, capsys):
    from fedprune.cli import main

    assert main(["bench-latency", "--save", "--paper-models"]) == 2
    assert "--save and --force need at least one run directory" in capsys.readouterr().err
    assert main(["bench-latency", str(tiny_run), "--force"]) == 2
    assert "--force only applies with --save" in capsys.readouterr().err
    assert not (tiny_run / "latency.json").exists()
