"""Tests for fedprune.metrics: size/cost counters, recorder and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fedprune.metrics import (
    Recorder,
    RoundRecord,
    count_flops,
    count_macs,
    n_params,
    payload_bytes,
    plot_run,
    read_rounds,
)


def _small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 32x32 -> 32x32
        nn.ReLU(),
        nn.MaxPool2d(2),  # -> 16x16
        nn.Conv2d(8, 16, 3),  # -> 14x14
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def test_conv_valid_macs_and_params() -> None:
    conv = nn.Conv2d(1, 2, 5)
    # 8x8 valid 5x5 -> 4x4 per channel: 4*4*2 = 32 outputs, each 1*5*5 = 25 MACs -> 800.
    assert count_macs(conv, torch.zeros(1, 1, 8, 8)) == 800
    assert count_flops(conv, torch.zeros(1, 1, 8, 8)) == 1600
    # weights 2*1*5*5 = 50 + bias 2 = 52.
    assert n_params(conv) == 52


def test_batch_is_divided_out() -> None:
    conv = nn.Conv2d(1, 2, 5)
    assert count_macs(conv, torch.zeros(4, 1, 8, 8)) == 800


def test_grouped_and_depthwise_conv() -> None:
    # groups=2, 4->6 channels, 3x3, padding 1 on 5x5: 5*5*6 = 150 outputs, each (4/2)*9 = 18
    # MACs -> 2700. Params: 6*(4/2)*3*3 = 108 + 6 bias = 114.
    grouped = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    assert count_macs(grouped, torch.zeros(1, 4, 5, 5)) == 2700
    assert n_params(grouped) == 114
    # depthwise 3->3 3x3 valid on 6x6: 4*4*3 = 48 outputs, each 1*9 MACs -> 432.
    # Params: 3*1*3*3 = 27, no bias.
    depthwise = nn.Conv2d(3, 3, 3, groups=3, bias=False)
    assert count_macs(depthwise, torch.zeros(1, 3, 6, 6)) == 432
    assert n_params(depthwise) == 27


def test_linear_and_uncounted_ops() -> None:
    # Linear 20->7: 7 outputs * 20 in_features = 140 MACs; params 20*7 + 7 = 147.
    lin = nn.Linear(20, 7)
    assert count_macs(lin, torch.zeros(1, 20)) == 140
    assert n_params(lin) == 147
    # BN, ReLU, pooling are not counted; Linear 4->3 on 1 sample: 3*4 = 12 MACs.
    net = nn.Sequential(nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    assert count_macs(net, torch.zeros(1, 4)) == 12


def test_n_params_ignores_frozen() -> None:
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))  # 15 + 8 = 23
    assert n_params(net) == 23
    for p in net[0].parameters():
        p.requires_grad_(False)
    assert n_params(net) == 8


def test_count_macs_restores_mode_and_removes_hooks() -> None:
    net = _small_cnn()
    net.train()
    count_macs(net, torch.zeros(1, 3, 32, 32))
    assert net.training
    assert all(not m._forward_hooks for m in net.modules())
    net.eval()
    count_macs(net, torch.zeros(1, 3, 32, 32))
    assert not net.training


def test_small_cnn_hand_count_and_flop_counter_agree() -> None:
    net = _small_cnn()
    x = torch.zeros(1, 3, 32, 32)
    # conv1: 32*32*8 = 8192 outputs * 3*9 = 27 -> 221184
    # conv2: 14*14*16 = 3136 outputs * 8*9 = 72 -> 225792
    # linear: 10 outputs * 16 -> 160;  total 447136 MACs.
    assert count_macs(net, x) == 221184 + 225792 + 160
    # FlopCounterMode counts convolution and mm/addmm as 2 FLOPs per MAC and ignores the
    # bias add, ReLU, max/avg pooling and flatten -- exactly our convention, so the totals
    # match exactly.
    net.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    assert count_flops(net, x) == counter.get_total_flops()


def test_payload_bytes_counts_bn_stats_not_counter() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    # conv 2*1*9 + 2 = 20 floats; BN weight, bias, running_mean, running_var = 4*2 = 8
    # floats; num_batches_tracked (int64) is not sent. 28 floats * 4 bytes = 112.
    assert "1.num_batches_tracked" in net.state_dict()
    assert payload_bytes(net) == 112
    assert payload_bytes(net.state_dict()) == 112
    assert payload_bytes(net, dtype_bytes=2) == 56


def _record(r: int, acc: float | None) -> RoundRecord:
    return RoundRecord(
        round=r,
        accuracy=acc,
        loss=None if acc is None else 1.0 - acc,
        params=1000 - 10 * r,
        macs=5000,
        flops=10000,
        widths={"conv1": 8 - r % 2},
        bytes_down=4000,
        bytes_up=4000,
        bytes_cumulative=8000 * (r + 1),
        clients=5,
        pruned=r == 2,
        seconds=0.5 * r,
        extra={"lr": 0.01},
    )


def test_recorder_appends_json_lines(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "run")
    for r in range(3):
        rec.append(_record(r, 0.5 + 0.1 * r if r != 1 else None))
    lines = (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()
    assert len(lines) == 3
    rows = [json.loads(line) for line in lines]
    assert rows[0]["lr"] == 0.01 and "extra" not in rows[0]
    assert rows[1]["accuracy"] is None and rows[2]["pruned"] is True
    assert read_rounds(tmp_path / "run") == rows


def test_summary_and_config_atomic(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    rec.write_summary({"final_accuracy": 0.9})
    rec.write_summary({"final_accuracy": 0.91, "rounds": 3})
    rec.write_config({"b": 1, "a": {"z": 2}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "summary.json"]
    assert json.loads((tmp_path / "summary.json").read_text()) == {
        "final_accuracy": 0.91,
        "rounds": 3,
    }
    text = (tmp_path / "config.json").read_text()
    assert text.index('"a"') < text.index('"b"') and '\n  "a"' in text


def test_read_rounds_rejects_malformed_line(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    rec.append(_record(0, 0.5))
    with open(tmp_path / "rounds.jsonl", "a") as fh:
        fh.write("{not json\n")
    with pytest.raises(ValueError, match=r"rounds\.jsonl.*line 2"):
        read_rounds(tmp_path)


def test_plot_run_writes_pngs(tmp_path: Path) -> None:
    run, dense = Recorder(tmp_path / "run"), Recorder(tmp_path / "dense")
    for r in range(4):
        run.append(_record(r, None if r == 1 else 0.4 + 0.1 * r))
        dense.append(_record(r, 0.45 + 0.1 * r))
    paths = plot_run(tmp_path / "run", dense_run_dir=tmp_path / "dense")
    assert [p.name for p in paths] == ["accuracy.png", "params.png", "bytes.png"]
    for p in paths:
        assert p.parent == tmp_path / "run"
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    assert len(plot_run(tmp_path / "dense")) == 3
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # every figure was closed


def test_a_plot_is_written_whole_or_not_at_all_and_the_error_names_it(tmp_path):
    import errno

    from matplotlib.figure import Figure

    from fedprune.metrics.plots import write_figure

    out = tmp_path / "prune_path.png"
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    write_figure(fig, out)
    before = out.read_bytes()
    assert before.startswith(b"\x89PNG") and not list(tmp_path.glob(".*.tmp"))

    def full_disk(fh, **kwargs):  # half a PNG written, then the disk is full
        fh.write(before[: len(before) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    fig.savefig = full_disk
    with pytest.raises(OSError) as got:
        write_figure(fig, out)
    assert got.value.errno == errno.ENOSPC and got.value.filename == str(out)
    assert out.read_bytes() == before  # the plot there before is untouched
    assert not list(tmp_path.glob(".*.tmp"))  # and nothing half written is left


def test_a_finished_run_whose_plots_cannot_be_written_says_so_in_one_line(
        tmp_path, monkeypatch, capsys):
    import errno

    import fedprune.metrics
    from fedprune.cli import main

    def full(run_dir):
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "accuracy.png"))

    monkeypatch.setattr(fedprune.metrics, "plot_run", full)
    rc = main(["run", "--out", str(tmp_path / "run"), "--no-progress", "--set", "threads=1",
               "--set", "data.num_clients=4", "--set", "model.widths=[4,8]",
               "--set", "train.local_epochs=1", "--set", "fed.rounds=1",
               "--set", "fed.clients_per_round=2", "--set", "prune.enabled=false"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{tmp_path / 'run' / 'accuracy.png'}: No space left on device" in err
    assert "the run finished and its records are complete" in err and "--resume" not in err
    assert (tmp_path / "run" / "summary.json").is_file()
