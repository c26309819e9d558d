"""fedprune's Flower ``ServerApp`` (flwr 1.41 message API).

Declared in ``flower/pyproject.toml`` (``serverapp = "fedprune.flower.server_app:server_app"``).
It resolves the run config into an :class:`~fedprune.config.ExperimentConfig`
(:mod:`.run_config`), creates the seeded initial model like the in-process loop, waits for
``min-nodes`` SuperNodes (asking each for its partition as it connects: one whose
``num-partitions`` is not ``data.num-clients`` -- in simulation, ``num-supernodes`` -- stops
the run at once), and runs :class:`~fedprune.federated.server.PruningServer`'s rounds over
:class:`~.transport.FlowerTransport` for ``fed.rounds`` rounds.  With ``out-dir``
set it writes the loop's files there: ``config.json``, ``rounds.jsonl`` (one line per round),
``checkpoint.pt`` (after every round), ``summary.json`` and, unless ``plots = false``, the
plots of ``fedprune run``.  With ``resume = true`` it continues the run whose checkpoint
``out-dir`` holds.  A run in which no round aggregated a valid reply raises after writing
the records (``status: failed``), so Flower reports it as failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..config import ConfigError, ExperimentConfig
from ..data import load_federated
from ..device import use_threads
from ..federated.server import PruningServer
from ..metrics import RoundRecord, plot_run
from ..rundir import OpenedRun, RunDir
from .nodes import NodeDirectory, wait_for_nodes
from .run_config import FlowerSettings, parse_run_config
from .transport import FlowerTransport, flower_summary

logger = logging.getLogger("flwr.fedprune")

__all__ = ["is_simulation", "run_server", "server_app"]

server_app = ServerApp()


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    _show_fedprune_logs()
    run_server(grid, dict(context.run_config))


def _show_fedprune_logs() -> None:
    """In the ServerApp's process only Flower's logger has a handler: give fedprune's
    engine-neutral loggers (the server's skips, cuts, resume) the same one, at its level, so
    their lines reach ``flwr run --stream`` and the SuperLink's log like the transport's."""
    flwr_log, ours = logging.getLogger("flwr"), logging.getLogger("fedprune")
    for handler in flwr_log.handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)
    if flwr_log.level and (not ours.level or flwr_log.level < ours.level):
        ours.setLevel(flwr_log.level)
    ours.propagate = False  # the lines are shown once, by Flower's handler


def run_server(
    grid: Grid,
    run_config: dict[str, Any],
    on_round: Callable[[RoundRecord], None] | None = None,
    simulation: bool | None = None,
) -> dict[str, Any]:
    """Run one experiment on ``grid``; return the summary (also written to ``out-dir``).

    ``simulation`` words the errors for the simulation engine (``None``: from the grid).

    Raises :class:`~fedprune.config.ConfigError` on a bad run config (or an ``out-dir`` that
    does not fit ``resume``) or when a SuperNode's ``num-partitions`` differs from
    ``data.num-clients``, and ``RuntimeError`` when no SuperNode can serve the experiment or
    no round aggregated a valid reply (the records, with ``status: failed`` in
    ``summary.json``, are written first).
    """
    cfg, settings = parse_run_config(run_config)
    n = cfg.data.num_clients
    if n == 0:
        raise ConfigError("data.num-clients = 0 (automatic: every natural client) needs the "
                          "data to count the partitions, and in Flower one SuperNode serves "
                          "each: set data.num-clients to the number of SuperNodes "
                          "(num-supernodes in simulation)")
    use_threads(cfg)
    run = _open_out_dir(settings, cfg)  # the policy decides at once, and locks the folder
    try:
        summary = _serve(grid, cfg, settings, run, on_round, simulation)
    finally:
        if run is not None:
            run.close()
    if summary["status"] != "completed":
        logger.error("fedprune: run failed: %s", summary["error"])
        raise RuntimeError(f"fedprune run failed: {summary['error']}")
    logger.info("fedprune: accuracy %.4f, params %d -> %d, widths %s", summary["accuracy"],
                summary["params_initial"], summary["params_final"], summary["widths_final"])
    return summary


def is_simulation(grid: Grid) -> bool:
    """Whether ``grid`` is the simulation engine's (virtual SuperNodes, fixed in number)."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    return isinstance(grid, InMemoryGrid)


def _serve(grid: Grid, cfg: ExperimentConfig, settings: FlowerSettings, run: OpenedRun | None,
           on_round: Callable[[RoundRecord], None] | None,
           simulation: bool | None) -> dict[str, Any]:
    """Load the data, wait for the SuperNodes, run the rounds; the run's summary."""
    n = cfg.data.num_clients
    data = load_federated(cfg.data, cfg.seed)
    if run is None:
        logger.warning("out-dir is not set: no rounds.jsonl / summary.json are written")
    # the ServerApp loads the same partitions as the ClientApps (for the test split and the
    # sample counts each reply may claim), so it builds the server exactly as the in-process loop does
    server = PruningServer.for_data(cfg, data, on_round=on_round)
    nodes = NodeDirectory(cfg, query_timeout=settings.round_timeout,
                          simulation=is_simulation(grid) if simulation is None else simulation)
    transport = FlowerTransport(grid, nodes, timeout=settings.round_timeout)
    # ask every SuperNode for its partition while waiting: a node whose num-partitions is not
    # data.num-clients (in simulation: num-supernodes) stops the run here, not 300 s later
    wait_for_nodes(grid, settings.min_nodes or n, settings.node_wait_timeout,
                   probe=lambda: nodes.probe(grid), problems=nodes.problems)
    server.begin(run)  # config.json only once the federation fits
    try:
        server.start_clock()
        server.run(transport)
        summary = flower_summary(server, nodes)
        summary["flower"] = settings.to_run_config()
        server.write_summary(summary)
        if run is not None and settings.plots:
            logger.info("plots: %s", ", ".join(p.name for p in plot_run(run.path)))
    finally:
        server.close()
    return summary


def _open_out_dir(settings: FlowerSettings, cfg: ExperimentConfig) -> OpenedRun | None:
    """``out-dir``, opened by the run-directory policy (:meth:`RunDir.open`): new or empty;
    with ``resume``, an unfinished run of this app and of the same config."""
    if not settings.out_dir:
        if settings.resume:
            raise ConfigError("resume = true needs out-dir: the run directory to resume")
        return None
    return RunDir(Path(settings.out_dir).expanduser()).open(cfg, resume=settings.resume,
                                                             engine="flower")
