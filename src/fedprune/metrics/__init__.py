"""Metrics for fedprune: model size/cost, per-round recording and plots.

* :mod:`fedprune.metrics.size` -- ``n_params``, ``count_macs``, ``count_flops``
  (= 2 x MACs) and ``payload_bytes`` (the float state_dict's bytes: a model's weight size;
  what a message weighs on the wire is :mod:`fedprune.federated.meter`'s count).
* :mod:`fedprune.metrics.recorder` -- ``RoundRecord``, ``Recorder`` (JSONL rounds,
  atomic ``summary.json``/``config.json``) and ``read_rounds``.
* :mod:`fedprune.metrics.plots` -- ``plot_run`` (imports matplotlib only when called).

Conventions: MACs are per sample and count only ``nn.Conv2d`` and ``nn.Linear``
(no bias, BN, activations or pooling); FLOPs are ``2 * MACs``, which equals the
total of ``torch.utils.flop_counter.FlopCounterMode`` for such CNNs. Payload
bytes count every floating-point ``state_dict`` entry (BN running stats
included) and skip integer buffers such as ``num_batches_tracked`` (which do travel,
and which the meter counts).

Typical use in a training loop::

    rec = Recorder(run_dir)
    rec.write_config(config)
    for rnd in range(rounds):
        ...
        rec.append(RoundRecord(
            round=rnd, accuracy=acc, loss=loss, params=n_params(model),
            macs=count_macs(model, x1), flops=count_flops(model, x1),
            widths=widths, bytes_down=down, bytes_up=up, bytes_cumulative=total,
            clients=n_replies, pruned=accepted, seconds=time.monotonic() - t0,
        ))
    rec.write_summary(summary)
    plot_run(run_dir, dense_run_dir=None)
"""

from __future__ import annotations

from fedprune.metrics.plots import plot_overview, plot_run
from fedprune.metrics.recorder import (
    CONFIG_FILE,
    ROUNDS_FILE,
    SUMMARY_FILE,
    Recorder,
    RoundRecord,
    read_rounds,
)
from fedprune.metrics.size import count_flops, count_macs, n_params, payload_bytes

__all__ = [
    "CONFIG_FILE",
    "ROUNDS_FILE",
    "SUMMARY_FILE",
    "Recorder",
    "RoundRecord",
    "count_flops",
    "count_macs",
    "n_params",
    "payload_bytes",
    "plot_overview",
    "plot_run",
    "read_rounds",
]
