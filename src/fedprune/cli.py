"""The ``fedprune`` command line: the only place that sets up logging and progress bars.

    fedprune run [--config FILE.toml] [--set key=value ...] --out DIR
    fedprune config [--config FILE.toml] [--set key=value ...]   # print the resolved config
    fedprune models                                              # list registered models
    fedprune data info NAME_OR_PATH [--set key=value ...]        # clients, samples, classes
    fedprune data prepare NAME_OR_PATH [--set key=value ...]     # build the prepared cache
    fedprune data list                                           # the named datasets
    fedprune reproduce --suite quick [--out DIR] [--report FILE.md]  # methods x seeds, report
    fedprune export RUN_DIR --out FILE.onnx|FILE.pte [--initial]  # the model, for phones
    fedprune bench-latency RUN_DIR [--save]                      # dense vs pruned latency
    fedprune compare RUN_DIR [RUN_DIR ...] [--plot FILE.png] [--markdown]  # runs side by side
    fedprune --version
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .checkpoint import ALLOW_FLAG, ALLOW_HELP
from .config import ConfigError, load_config
from .export import ExportError
from .export import commands as export_commands
from .reproduce import commands as reproduce_commands
from .run_command import auto_line, budget_line, cmd_run  # noqa: F401 - public here too
from .rundir import CHECKPOINT_FILE, CONFIG_FILE, ROUNDS_FILE, SUMMARY_FILE

logger = logging.getLogger("fedprune")


SET_HELP = {
    "run": "override one setting, e.g. --set prune.k=1.5 (repeatable); --set "
           "prune.enabled=false runs the dense FedAvg baseline, --set "
           "budget.params_fraction=0.1 prunes to a budget",
    "config": "override one setting, e.g. --set fed.rounds=50 (repeatable); the JSON shows "
              "the result",
    "info": "override a data setting, e.g. --set data.num_clients=100 or --set data.alpha=0.1 "
            "(repeatable); the partition shown is the one 'fedprune run' makes with them",
    "prepare": "override a data setting, e.g. --set data.format=leaf or --set "
               "data.cache_dir=DIR (repeatable)",
}


def _add_config_args(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--config", type=Path, default=None, metavar="FILE.toml",
                   help="TOML file of settings, applied before --set (default: the built-in "
                        "defaults; 'fedprune config' prints them)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help=SET_HELP[command])


def _version() -> str:
    try:
        return version("fedprune")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        from . import __version__

        return __version__


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fedprune", description="Automatic structured pruning "
                                 "during federated training.",
                                 epilog="'fedprune COMMAND --help' shows the options of a "
                                        "command.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(title="commands", dest="command", required=True,
                           metavar="COMMAND")
    run = sub.add_parser(
        "run", help="run one federated experiment in process",
        description="Run one federated experiment in process and write its records to --out: "
                    f"{ROUNDS_FILE}, {SUMMARY_FILE}, {CONFIG_FILE}, {CHECKPOINT_FILE} and PNG "
                    "plots.")
    _add_config_args(run, "run")
    where = run.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, metavar="DIR",
                       help="new (or empty) run directory for the records")
    where.add_argument("--resume", type=Path, metavar="DIR",
                       help=f"continue the interrupted run in DIR (its own {CONFIG_FILE})")
    run.add_argument(ALLOW_FLAG, action="store_true",
                     help=f"with --resume: {ALLOW_HELP}")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    cfg = sub.add_parser("config", help="print the resolved configuration as JSON",
                         description="Print the configuration a run with these --config and "
                                     "--set options would use, every setting included.")
    _add_config_args(cfg, "config")
    sub.add_parser("models", help="list the registered models")
    data = sub.add_parser("data", help="inspect or prepare datasets (docs/data.md)")
    dsub = data.add_subparsers(title="commands", dest="data_command", required=True,
                              metavar="COMMAND")
    for name, text in (("info", "clients, samples, classes and a per-client size histogram"),
                       ("prepare", "read the files once into the prepared-data cache")):
        p = dsub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("target", metavar="NAME_OR_PATH",
                       help="a dataset name (femnist, celeba, fashion-mnist, ...) or the path "
                            "to its files (the dataset is then guessed from them)")
        _add_config_args(p, name)
        if name == "info":
            p.add_argument("--seed", type=int, default=None,
                           help="seed of the partition shown (default: the config's seed)")
    dsub.add_parser("list", help="the named datasets, their formats and default paths")
    reproduce_commands.add_parser(sub)
    cmp_ = sub.add_parser(
        "compare", help="runs side by side: a table, and their curves on one figure",
        description="Compare run directories (finished or running, in-process or Flower): "
                    "final accuracy, params, FLOPs, bytes on the wire and their ratio to the "
                    "first dense FedAvg run (else the first run), the budget outcome, and the "
                    "latency where it was measured with 'fedprune bench-latency --save'.")
    cmp_.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                      help="run directories (the --out of 'fedprune run', the out-dir of the "
                           "Flower app)")
    cmp_.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                      help="also draw accuracy and params per round of every run on one "
                           "figure, pruning rounds marked (default: no figure)")
    cmp_.add_argument("--markdown", action="store_true",
                      help="print a Markdown table (default: aligned plain text)")
    export_commands.add_parsers(sub)
    return ap


def _data_config(args: argparse.Namespace):  # -> ExperimentConfig
    from .data import NAMES, detect_format, guess_name

    pre: list[str] = []
    if args.target in NAMES:
        pre.append(f"data.name={args.target}")
    else:
        path = Path(args.target).expanduser()
        if not path.exists():
            raise ConfigError(f"{args.target!r} is neither a dataset name ({', '.join(NAMES)}) "
                              "nor an existing file or folder")
        pre.append(f"data.path={path.resolve()}")
        if not any(s.strip().startswith("data.name=") for s in args.sets):
            fmt = next((s.split("=", 1)[1] for s in args.sets
                        if s.strip().startswith("data.format=")), "auto")
            fmt = detect_format(path) if fmt == "auto" else fmt
            pre.append(f"data.name={guess_name(path, fmt)}")
    if not any(s.strip().startswith("fed.clients_per_round=") for s in args.sets):
        pre.append("fed.clients_per_round=1")  # the fed section plays no part here
    return load_config(args.config, pre + list(args.sets))


def _cmd_data(args: argparse.Namespace) -> int:
    from .data import SPECS, describe, load_prepared

    if args.data_command == "list":
        for spec in SPECS.values():
            where = spec.default_path or ("embedded" if not spec.formats else "data.path")
            formats = ", ".join(spec.formats + (("hub: " + spec.hub_id,) if spec.hub_id else ()))
            print(f"{spec.name:<14} {spec.description}\n{'':<14} formats: {formats or '-'}; "
                  f"files: {where}")
        return 0
    cfg = _data_config(args)
    if args.data_command == "info":
        print(describe(cfg.data, cfg.seed if args.seed is None else args.seed))
        return 0
    if cfg.data.name == "digits":
        print("digits is embedded in scikit-learn: nothing to prepare")
        return 0
    prep = load_prepared(cfg.data)
    state = "reused (up to date)" if prep.reused else f"prepared in {prep.seconds:.1f} s"
    print(json.dumps({"dataset": cfg.data.name, "format": prep.meta["format"],
                      "source": prep.meta["source"]["path"],
                      "cache": str(prep.directory) if prep.directory else None,
                      "samples": int(prep.meta["num_samples"]), "state": state}, indent=2))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .metrics.compare import format_table, label_runs, plot_compare, read_run

    if args.plot is not None:
        from matplotlib.figure import Figure

        kinds = Figure().canvas.get_supported_filetypes()
        ext = args.plot.suffix.lower().lstrip(".")
        if ext not in kinds:
            raise ValueError(f"--plot {args.plot}: give a file name ending in .png (or .pdf, "
                             ".svg, another format matplotlib writes)")
    runs = [read_run(d, label) for d, label in zip(args.run_dirs, label_runs(args.run_dirs),
                                                    strict=True)]
    print(format_table(runs, markdown=args.markdown))
    if args.plot is not None:
        print(f"wrote {plot_compare(runs, args.plot)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status (2 for bad input, 141 when stdout is closed early)."""
    try:
        try:
            args = _parser().parse_args(argv)
        except SystemExit:  # --help, --version, a usage error: flush while we can catch
            sys.stdout.flush()
            raise
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        code = _dispatch(args, argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        # the reader went away (fedprune ... | head): stop quietly, as a Unix filter does; the
        # interpreter's last flush writes to /dev/null instead of raising again
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file descriptor (embedded use)
            pass
        finally:
            os.close(devnull)
        return 141  # 128 + SIGPIPE, the status of a filter stopped by its reader
    except (ConfigError, ValueError, ExportError) as exc:
        print(f"fedprune: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the operating system refused: full disk, read-only, not a folder
        print(f"fedprune: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    return code


# what to do about an operating-system error, by errno
_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space, then run the command again (a run with "
                  "a checkpoint continues with --resume)",
    errno.EDQUOT: "the disk quota is used up: free some space, then run the command again",
    errno.EROFS: "the file system is read-only: choose a writable place",
    errno.EACCES: "permission denied: choose a place you may write to, or fix its permissions",
    errno.EPERM: "not permitted: choose a place you may write to, or fix its permissions",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "it is a folder, where a file is expected: name a file",
    errno.ENOENT: "it does not exist: check the path",
    errno.EEXIST: "it exists already: choose another path",
}


def os_error_line(exc: OSError) -> str:
    """One line naming the file, what the system said and what to do."""
    said = exc.strerror or str(exc)
    line = f"{exc.filename}: {said}" if exc.filename is not None else said
    hint = _OS_HINTS.get(exc.errno or -1)
    return f"{line} ({hint})" if hint else line


def _dispatch(args: argparse.Namespace, argv: list[str] | None) -> int:
    if args.command == "run":
        return cmd_run(args)
    if args.command == "config":
        print(json.dumps(load_config(args.config, args.sets).to_dict(), indent=2))
        return 0
    if args.command == "data":
        return _cmd_data(args)
    if args.command == "compare":
        return _cmd_compare(args)
    if args.command == "export":
        return export_commands.cmd_export(args)
    if args.command == "bench-latency":
        return export_commands.cmd_bench_latency(args)
    if args.command == "reproduce":
        return reproduce_commands.cmd_reproduce(
            args, argv if argv is not None else sys.argv[1:])
    if args.command == "models":
        from .models import list_models

        print("\n".join(list_models()))
        return 0
    return 1  # pragma: no cover


def app() -> None:
    raise SystemExit(main())
