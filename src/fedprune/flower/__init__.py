"""fedprune as a Flower App (flwr 1.41 message API): the only package that imports ``flwr``.

* :mod:`.server_app` -- ``server_app`` and :func:`~.server_app.run_server`;
* :mod:`.client_app` -- ``client_app``;
* :mod:`.transport` -- :class:`~.transport.FlowerTransport`, the transport that carries
  :class:`fedprune.federated.server.PruningServer`'s rounds as Flower messages;
* :mod:`.messages` -- what travels, packed and unpacked;
* :mod:`.nodes` -- which SuperNode serves which partition;
* :mod:`.grid` -- a polling grid, and an in-process grid for running without processes;
* :mod:`.run_config` -- Flower run config <-> :class:`~fedprune.config.ExperimentConfig`;
* :mod:`.connection` -- ``python -m fedprune.flower set-connection NAME ADDRESS``.

The app is declared in ``flower/pyproject.toml`` at the repository root.
"""
