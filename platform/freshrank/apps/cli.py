"""The ``freshrank`` command: ``demo``, ``simulate``, ``train``, ``status``, ``ui``,
``backtest``, ``registry``.

Every option of ``demo``, ``simulate`` and ``train`` comes from a field of a typed config
dataclass; its ``--help`` text is the field's attribute docstring (the string literal right under
the field), read from the source with ``ast``. ``simulate`` and ``train`` stop cleanly on SIGTERM
and SIGINT (what ``ray job stop`` and Ctrl-C send): the producer finishes the shard it is on,
marks the landing zone done and prints its stats; the trainer checkpoints the window it is on.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import inspect
import itertools
import json
import os
import signal
import textwrap
import threading
import time
import types
import typing
from collections.abc import Iterator, Sequence
from typing import Any

from freshrank.core.signals import on_stop_signals


def add_dataclass_options(
    parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()
) -> None:
    """One ``--flag`` per scalar field of a config dataclass, typed from its annotation."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, optional = _scalar_type(hints[f.name])
        if kind is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        doc = _field_doc(cls, f.name)
        if kind is bool:
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=f"{doc} (default: {default})",
            )
        else:
            help_text = f"{doc} (default: {default})" if not required else doc
            choices = _literal_choices(hints[f.name])
            parser.add_argument(
                flag,
                type=_parse_optional(kind) if optional else kind,
                default=default,
                required=required,
                help=help_text,
                choices=choices,
                metavar="{" + ",".join(choices) + "}" if choices else kind.__name__.upper(),
            )


def dataclass_from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """Build a config dataclass from parsed options (fields without an option keep defaults)."""
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if hasattr(args, f.name) and f.name not in extra
    }
    return cls(**values, **extra)


def json_object(text: str) -> dict[str, Any]:
    """A flag's JSON object (e.g. ``--resources-per-worker '{"CPU": 1}'``).

    >>> json_object('{"CPU": 1, "train_slot": 1}')
    {'CPU': 1, 'train_slot': 1}
    >>> json_object("[1]")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a JSON object, got '[1]'
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _scalar_type(hint: Any) -> tuple[type | None, bool]:
    """``(type, optional)`` of a field that becomes a flag; ``(None, False)`` when it cannot.

    ``X | None`` is an optional ``X``; a path (``str | os.PathLike[str]``) is a ``str``; a
    ``Literal`` of strings is a ``str`` with those choices.
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if str in args and all(a is str or _is_pathlike(a) for a in args):
            return str, optional
        if len(args) == 1 and args[0] in (int, float, str, bool):
            return args[0], optional
        return None, False
    if hint in (int, float, str, bool):
        return hint, False
    if _literal_choices(hint):
        return str, False
    return None, False


def _literal_choices(hint: Any) -> tuple[str, ...] | None:
    """The values of a ``Literal["a", "b"]`` of strings (a flag with choices), else None."""
    if typing.get_origin(hint) is typing.Literal:
        values = typing.get_args(hint)
        if values and all(isinstance(v, str) for v in values):
            return values
    return None


def _is_pathlike(hint: Any) -> bool:
    return hint is os.PathLike or typing.get_origin(hint) is os.PathLike


def _parse_optional(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _field_doc(cls: type, name: str) -> str:
    """The ``--help`` text of field ``name``: its attribute docstring, else its name in words."""
    doc = attribute_docs(cls).get(name) or name.replace("_", " ")
    return doc.replace("%", "%%")  # argparse %-formats help strings


@functools.cache
def attribute_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a class (and its bases), as one line each.

    Python keeps no attribute docstrings at run time, so they are read from the class source:
    a string literal right after an annotated field is that field's doc (the convention Sphinx
    and PEP 257 call attribute docstrings). RST double backticks are dropped. Classes without
    source (built-ins, ``exec``) give ``{}``.

    >>> from freshrank.ops.runtime import RayInfo
    >>> attribute_docs(RayInfo)["metrics_report_interval_s"]
    'How often processes export metrics (None: as the joined cluster was configured).'
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        node = tree.body[0] if tree.body else None
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt, following in itertools.pairwise(node.body):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                text = " ".join(inspect.cleandoc(following.value.value).split())
                docs[stmt.target.id] = text.replace("``", "")
    return docs


def _cmd_demo(args: argparse.Namespace) -> int:
    from freshrank.apps.demo import DemoConfig, run_demo

    result = run_demo(dataclass_from_args(DemoConfig, args))
    return 0 if result.client.failed == 0 else 1


def _cmd_simulate(args: argparse.Namespace) -> int:
    from freshrank.events.produce import ProducerConfig, run_producer
    from freshrank.events.simulator import SimulatorConfig

    config = dataclass_from_args(ProducerConfig, args, simulator=SimulatorConfig(seed=args.seed))
    stop = threading.Event()
    limits = ["SIGTERM/SIGINT"]
    if config.duration_s is not None:
        limits.insert(0, f"{config.duration_s:g} s")
    if config.max_shards is not None:
        limits.insert(0, f"{config.max_shards} shards")
    _log(
        "simulate",
        f"landing {config.landing_path}: {config.events_per_second:g} events/s in shards of "
        f"{config.shard_events} until {' or '.join(limits)}",
    )
    every = args.progress_every_s
    last = [time.monotonic()]

    def show(stats: Any) -> None:
        now = time.monotonic()
        if every > 0 and now - last[0] >= every:
            last[0] = now
            _log(
                "simulate",
                f"shards {stats.shards_written} events {stats.events_written} "
                f"bad {stats.bad_shards_written} elapsed {stats.elapsed_s:.1f} s "
                f"max lag {stats.max_lag_s:.2f} s",
            )

    metrics = None
    if args.metrics_port is not None:
        from freshrank.core.telemetry import Telemetry, serve_prometheus_client

        metrics = Telemetry.for_prometheus_client()
        server = serve_prometheus_client(args.metrics_port)
        _log("simulate", f"metrics at {server.url}")
    with stop_on_signals(lambda signum: stop.set(), "simulate", "stopping after this shard"):
        stats = run_producer(config, stop=stop, progress=show, metrics=metrics)
    how = "stopped by signal" if stop.is_set() else "finished"
    _log("simulate", f"{how}: {stats.shards_written} shards, {stats.events_written} events")
    print(json.dumps(dataclasses.asdict(stats), indent=2), flush=True)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import ray

    from freshrank.learn.config import TrainConfig
    from freshrank.learn.train import run_training
    from freshrank.ops.progress import LoopProgress, ProgressConfig
    from freshrank.ops.runtime import current_metrics_url, init_ray, ray_logs_dir
    from freshrank.registry.store import Registry

    config = dataclass_from_args(TrainConfig, args)
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    verbose = bool(getattr(args, "verbose", False))
    if not ray.is_initialized():
        info = init_ray(address=address, log_to_driver=verbose)
        where = f"joined Ray at {address}" if address else "started a local Ray"
        _log("train", f"{where} (dashboard {info.dashboard_url or 'n/a'})")
    if not verbose:
        _log("train", f"Ray's worker and controller logs: {ray_logs_dir()} (--verbose prints them)")
    _log(
        "train",
        f"landing {config.landing} -> registry {config.registry}, {config.num_workers} "
        f"worker(s){' on GPU' if config.use_gpu else ''}; SIGTERM/SIGINT stop after the window",
    )
    progress = None
    if Registry(config.registry).is_local:  # the progress display reads the registry's files
        progress = LoopProgress(
            ProgressConfig(
                registry=config.registry,
                landing=config.landing,
                metrics_url=current_metrics_url(),
                interval_s=2.0,
            )
        ).start()
    try:
        # run_training turns SIGTERM into "finish and checkpoint this window, then return".
        summary = run_training(config)
    finally:
        if progress is not None:
            progress.stop()
    _log(
        "train",
        f"stopped: {summary.versions_trained} version(s) trained, {len(summary.versions)} kept, "
        f"champion {summary.champion}, {summary.events_trained} events trained in total",
    )
    print(json.dumps(dataclasses.asdict(summary), indent=2, default=str), flush=True)
    return 0


def _log(command: str, message: str) -> None:
    """One progress line on stdout (what ``ray job logs`` shows), flushed at once."""
    stamp = time.strftime("%H:%M:%S")
    print(f"{stamp} [freshrank {command}] {message}", flush=True)


@contextlib.contextmanager
def stop_on_signals(
    on_signal: typing.Callable[[int], None], command: str, what: str
) -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT call ``on_signal(signum)`` instead of killing.

    ``ray job stop`` sends SIGTERM to the job's processes (then SIGKILL after
    ``RAY_JOB_STOP_WAIT_TIME_S``, see ``jobs/runtime_env.yaml``); Ctrl-C sends SIGINT. Handlers
    can only be installed from the main thread; elsewhere this does nothing
    (`freshrank.core.signals.on_stop_signals`).
    """

    def logged(signum: int) -> None:
        _log(command, f"signal {signal.Signals(signum).name}: {what}")
        on_signal(signum)

    with on_stop_signals(logged):
        yield


def _cmd_status(args: argparse.Namespace) -> int:
    from freshrank.ops.status import collect_status, render_status

    print(render_status(collect_status(args.registry, args.landing, args.metrics_url)))
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from freshrank.ops.ui import start_status_page

    page = start_status_page(args.registry, args.landing, args.metrics_url, args.host, args.port)
    _log("ui", f"status page at {page.url} (Ctrl-C stops it)")
    stop = threading.Event()
    with stop_on_signals(lambda signum: stop.set(), "ui", "stopping the page"):
        while not stop.wait(1.0):
            pass
    page.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``freshrank`` command."""
    from freshrank.apps.demo import DemoConfig
    from freshrank.events.produce import ProducerConfig
    from freshrank.learn.config import TrainConfig

    parser = argparse.ArgumentParser(prog="freshrank", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="run the whole loop on a local Ray and print a summary",
        description="The whole loop on a local Ray: simulator, incremental trainer, hot-swapped "
        "Serve endpoint and an HTTP client; prints progress and a summary.",
    )
    add_dataclass_options(demo, DemoConfig)
    demo.set_defaults(func=_cmd_demo)

    sim = sub.add_parser(
        "simulate",
        help="land simulated event shards at a steady rate",
        description="Land simulated event shards into a landing zone at a steady rate until "
        "--duration-s, --max-shards or SIGTERM/SIGINT (`ray job stop`), then mark the zone done "
        "and print the producer's stats as JSON.",
    )
    add_dataclass_options(sim, ProducerConfig, skip=("event_time", "null_field"))
    sim.add_argument("--seed", type=int, default=0, help="Simulator seed (default: 0)")
    sim.add_argument(
        "--progress-every-s",
        type=float,
        default=5.0,
        metavar="FLOAT",
        help="Print a progress line at most this often; 0 for none (default: 5.0)",
    )
    sim.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="INT",
        help="Serve freshrank_events_landed_total for Prometheus on 127.0.0.1:PORT (0: a free "
        "port, printed); default: no endpoint (the producer runs outside Ray's metrics)",
    )
    sim.set_defaults(func=_cmd_simulate)

    train = sub.add_parser(
        "train",
        help="run the long-lived incremental trainer",
        description="Train window after window of newly landed shards in one long-lived Ray "
        "Train job; every window becomes a registry version. Stops when its config says so, or "
        "on SIGTERM (`ray job stop`) after checkpointing the window it is on; prints a summary.",
    )
    add_dataclass_options(train, TrainConfig)
    train.add_argument(
        "--resources-per-worker",
        type=json_object,
        default=None,
        metavar="JSON",
        help=f"{_field_doc(TrainConfig, 'resources_per_worker')} (a JSON object; default: None)",
    )
    train.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join ('auto', 'ray://host:10001', host:port); default: $RAY_ADDRESS "
        "(set inside `ray job submit`), else start a local Ray on 127.0.0.1",
    )
    train.add_argument(
        "--verbose",
        action="store_true",
        help="also print what Ray's workers and controllers log (default: kept in Ray's log "
        "files, named at the start; the terminal shows the loop's progress)",
    )
    train.set_defaults(func=_cmd_train)

    status = sub.add_parser("status", help="print the live state: champion, freshness, drift")
    status.add_argument("--registry", required=True, help="registry directory")
    status.add_argument("--landing", default=None, help="landing zone (for quarantined shards)")
    status.add_argument(
        "--metrics-url", default=None, help="Ray metrics endpoint (http://127.0.0.1:PORT/metrics)"
    )
    status.set_defaults(func=_cmd_status)

    ui = sub.add_parser(
        "ui",
        help="serve the status page (champion, timeline, freshness, AUC, drift, quarantine)",
        description="Serve an HTML status page that reloads itself (and /status.json) on "
        "127.0.0.1 until SIGTERM/SIGINT.",
    )
    ui.add_argument("--registry", required=True, help="registry directory")
    ui.add_argument("--landing", default=None, help="landing zone (for quarantined shards)")
    ui.add_argument(
        "--metrics-url", default=None, help="Ray metrics endpoint (http://127.0.0.1:PORT/metrics)"
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    ui.add_argument("--port", type=int, default=8266, help="port; 0 picks one (default: 8266)")
    ui.set_defaults(func=_cmd_ui)

    from freshrank.apps.backtest_cli import add_backtest_command
    from freshrank.apps.registry_cli import add_registry_commands

    add_backtest_command(sub)

    add_registry_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``freshrank`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as exc:  # configuration errors: say what is wrong, no traceback
        parser.error(str(exc))
        return 2
