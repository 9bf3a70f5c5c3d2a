"""``freshrank registry ...``: inspect versions, promote, roll back, pin, prune.

    freshrank registry list     --registry DIR
    freshrank registry show     --registry DIR [--version V]
    freshrank registry log      --registry DIR [--last N]
    freshrank registry promote  --registry DIR V [--fresh SHARD.parquet ...] [--reason TEXT]
    freshrank registry rollback --registry DIR [--to V] [--reason TEXT]
    freshrank registry pin      --registry DIR V [--reason TEXT]
    freshrank registry unpin    --registry DIR [--reason TEXT]
    freshrank registry prune    --registry DIR --keep-last N

``promote`` with ``--fresh`` runs the promotion gate on those event shards (rows neither model
trained on); without it, it is an operator override that only checks the version verifies.
``pin`` writes the registry's ``PINNED`` pointer, which serving replicas honour within a poll
interval without a redeploy (the Serve ``user_config`` ``pinned_version`` takes precedence).
Every change is recorded in the promotion log.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from freshrank.registry.store import ChampionChanged, CorruptVersion, NoRollbackTarget, Registry


def add_registry_commands(subparsers: Any) -> argparse.ArgumentParser:  # noqa: ANN401
    """Add ``registry`` with its sub-commands to ``subparsers`` (from ``add_subparsers()``).

    Each sub-command sets ``func(args) -> int`` (the exit status) on the parsed namespace.
    """
    reg = subparsers.add_parser(
        "registry",
        help="inspect the model registry; promote, roll back, pin, prune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = reg.add_subparsers(dest="action", required=True)

    def command(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:  # noqa: ANN401
        p = actions.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--registry", required=True, help="registry directory")
        p.set_defaults(func=func)
        return p

    command("list", "list versions (* champion, P pinned)", _cmd_list)
    show = command("show", "print a version's manifest", _cmd_show)
    show.add_argument("--version", type=int, default=None, help="version (default: champion)")
    log = command("log", "print the promotion log", _cmd_log)
    log.add_argument("--last", type=int, default=20, help="how many entries (default: 20)")
    promote = command("promote", "make a version champion", _cmd_promote)
    promote.add_argument("version", type=int, help="version to promote")
    promote.add_argument(
        "--fresh",
        nargs="+",
        default=None,
        metavar="PARQUET",
        help="event shards to run the promotion gate on (default: no gate, operator override)",
    )
    promote.add_argument("--reason", default="", help="why (recorded in the promotion log)")
    rollback = command("rollback", "make an earlier champion champion again", _cmd_rollback)
    rollback.add_argument(
        "--to", type=int, default=None, help="version (default: the previous champion)"
    )
    rollback.add_argument("--reason", default="", help="why (recorded in the promotion log)")
    pin = command("pin", "serve a version regardless of the champion", _cmd_pin)
    pin.add_argument("version", type=int, help="version to serve")
    pin.add_argument("--reason", default="", help="why (recorded in the promotion log)")
    unpin = command("unpin", "follow the champion again", _cmd_unpin)
    unpin.add_argument("--reason", default="", help="why (recorded in the promotion log)")
    prune = command("prune", "delete old versions (keeps champion, pin, rollback)", _cmd_prune)
    prune.add_argument("--keep-last", type=int, required=True, help="newest versions to keep")
    return reg


# ----- sub-commands ----------------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)
    champion, pinned = registry.champion_version(), registry.pinned_version()
    versions = registry.list_versions()
    if not versions:
        print("no versions yet")
        return 0
    for v in versions:
        try:
            m = registry.get(v).manifest
        except CorruptVersion as exc:
            print(f"  v{v:<5d} CORRUPT: {exc}")
            continue
        mark = ("*" if v == champion else " ") + ("P" if v == pinned else " ")
        metrics = m.get("metrics", {})
        print(
            f"{mark} v{v:<5d} {_when(m.get('created_at'))} events {m.get('window_events', 0):>8} "
            f"auc {_num(metrics.get('eval_auc'))} loss {_num(metrics.get('loss'))} "
            f"cursor {m.get('cursor')}"
        )
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)
    version = args.version if args.version is not None else registry.champion_version()
    if version is None:
        print("no champion yet; pass --version", file=sys.stderr)
        return 1
    return _guard(lambda: print(json.dumps(registry.get(version).manifest, indent=2)))


def _cmd_log(args: argparse.Namespace) -> int:
    for event in Registry(args.registry).promotions()[-max(args.last, 0) :]:
        print(
            f"{_when(event.get('at'))} {event.get('kind', '?'):<11} "
            f"v{event.get('from_version')} -> v{event.get('to_version')}  "
            f"{event.get('reason', '')}"
        )
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)
    if args.fresh is None:

        def override() -> None:
            registry.set_champion(args.version, reason=args.reason or "manual promotion")
            print(f"v{args.version} is champion (manual, no gate)")

        return _guard(override)
    from freshrank.registry.promotion import Promoter, PromotionOutcome

    def gated() -> int:
        rows = _fresh_rows(registry, args.version, args.fresh)
        result = Promoter(registry).consider(args.version, rows)
        print(f"v{args.version}: {result.outcome.value}")
        for reason in result.reasons:
            print(f"  {reason}")
        return 0 if result.outcome is PromotionOutcome.PROMOTED else 1

    return _guard(gated)


def _cmd_rollback(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)

    def rollback() -> None:
        before = registry.champion_version()
        target = registry.rollback(args.to, reason=args.reason or "manual rollback")
        print(f"rolled back v{before} -> v{target}")

    return _guard(rollback)


def _cmd_pin(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)

    def pin() -> None:
        registry.pin(args.version, reason=args.reason or "manual pin")
        print(f"serving pinned to v{args.version}")

    return _guard(pin)


def _cmd_unpin(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)
    previous = registry.unpin(reason=args.reason or "manual unpin")
    if previous is None:
        print("nothing was pinned")
    else:
        print(f"unpinned v{previous}; serving follows champion v{registry.champion_version()}")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)
    removed = registry.prune(args.keep_last)  # ValueError for a bad count: the parser reports it
    print(f"removed {len(removed)} version(s): {removed}" if removed else "nothing to remove")
    return 0


# ----- helpers ---------------------------------------------------------------------------------


def _guard(action: Any) -> int:  # noqa: ANN401
    """Run ``action``; print registry errors (missing, corrupt, ...) as one line, status 1.

    Returns the action's own status when it gives one, else 0.
    """
    try:
        status = action()
    except KeyError as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 1
    except (CorruptVersion, NoRollbackTarget, ChampionChanged) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return int(status) if isinstance(status, int) else 0


def _fresh_rows(registry: Registry, version: int, paths: Sequence[str]) -> dict[str, Any]:
    """Read, clean and encode event shards with the challenger's feature config."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from freshrank.events.schema import conform, drop_invalid_rows
    from freshrank.features.encode import encode
    from freshrank.model.config import RankerConfig

    config = RankerConfig.from_dict(registry.get(version).manifest["model_config"])
    table = pa.concat_tables([conform(pq.read_table(p)) for p in paths])
    table, _dropped = drop_invalid_rows(table)
    return encode(table, config.features)


def _when(at: Any) -> str:  # noqa: ANN401
    if not isinstance(at, int | float):
        return "-" * 19
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _num(value: Any) -> str:  # noqa: ANN401
    return f"{value:.4f}" if isinstance(value, int | float) else str(value)
