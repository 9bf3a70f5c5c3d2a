"""The ``freshrank`` command: ``demo``, ``simulate``, ``train``, ``registry``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any


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
                flag, action=argparse.BooleanOptionalAction, default=default, help=doc
            )
        else:
            help_text = f"{doc} (default: {default})" if not required else doc
            parser.add_argument(
                flag,
                type=_parse_optional(kind) if optional else kind,
                default=default,
                required=required,
                help=help_text,
                metavar=kind.__name__.upper(),
            )


def dataclass_from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """Build a config dataclass from parsed options (fields without an option keep defaults)."""
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if hasattr(args, f.name) and f.name not in extra
    }
    return cls(**values, **extra)


def _scalar_type(hint: Any) -> tuple[type | None, bool]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and args[0] in (int, float, str, bool):
            return args[0], True
        return None, False
    if hint in (int, float, str, bool):
        return hint, False
    return None, False


def _parse_optional(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _field_doc(cls: type, name: str) -> str:
    # Attribute docstrings are not kept at run time; the flag name and type must do.
    return name.replace("_", " ")


def _cmd_demo(args: argparse.Namespace) -> int:
    from freshrank.demo import DemoConfig, run_demo

    result = run_demo(dataclass_from_args(DemoConfig, args))
    return 0 if result.client.failed == 0 else 1


def _cmd_simulate(args: argparse.Namespace) -> int:
    from freshrank.events.produce import ProducerConfig, run_producer
    from freshrank.events.simulator import SimulatorConfig

    config = dataclass_from_args(ProducerConfig, args, simulator=SimulatorConfig(seed=args.seed))

    def show(stats: Any) -> None:
        print(
            f"\rshards {stats.shards_written} events {stats.events_written} "
            f"bad {stats.bad_shards_written} elapsed {stats.elapsed_s:.1f} s",
            end="",
            flush=True,
        )

    stats = run_producer(config, progress=show)
    print()
    print(json.dumps(dataclasses.asdict(stats), indent=2))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import ray

    from freshrank.learn.config import TrainConfig
    from freshrank.learn.train import run_training
    from freshrank.runtime import init_ray

    config = dataclass_from_args(TrainConfig, args)
    if not ray.is_initialized():
        init_ray(address=args.address)
    summary = run_training(config)
    print(json.dumps(dataclasses.asdict(summary), indent=2, default=str))
    return 0


def _cmd_registry(args: argparse.Namespace) -> int:
    from freshrank.registry.store import Registry

    registry = Registry(args.registry)
    if args.action == "list":
        champion = registry.champion_version()
        for v in registry.list_versions():
            m = registry.get(v).manifest
            mark = "*" if v == champion else " "
            print(
                f"{mark} v{v:<5d} events {m.get('window_events', 0):>8} "
                f"auc {m.get('metrics', {}).get('eval_auc')} cursor {m.get('cursor')}"
            )
        return 0
    if args.action == "show":
        version = args.version or registry.champion_version()
        if version is None:
            print("no versions yet", file=sys.stderr)
            return 1
        print(json.dumps(registry.get(version).manifest, indent=2))
        return 0
    raise AssertionError(args.action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``freshrank`` command."""
    from freshrank.demo import DemoConfig
    from freshrank.events.produce import ProducerConfig
    from freshrank.learn.config import TrainConfig

    parser = argparse.ArgumentParser(prog="freshrank", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole loop on a local Ray and print a summary")
    add_dataclass_options(demo, DemoConfig)
    demo.set_defaults(func=_cmd_demo)

    sim = sub.add_parser("simulate", help="land simulated event shards at a steady rate")
    add_dataclass_options(sim, ProducerConfig, skip=("event_time", "null_field"))
    sim.add_argument("--seed", type=int, default=0, help="simulator seed")
    sim.set_defaults(func=_cmd_simulate)

    train = sub.add_parser("train", help="run the long-lived incremental trainer")
    add_dataclass_options(train, TrainConfig)
    train.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    train.set_defaults(func=_cmd_train)

    reg = sub.add_parser("registry", help="inspect the model registry")
    reg.add_argument("action", choices=["list", "show"])
    reg.add_argument("--registry", required=True, help="registry directory")
    reg.add_argument("--version", type=int, default=None, help="version (default: champion)")
    reg.set_defaults(func=_cmd_registry)
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
