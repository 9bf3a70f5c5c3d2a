"""``freshrank registry ...`` sub-commands, run through their own argument parser."""

import argparse
import json

import pyarrow.parquet as pq
import pytest
import torch

from freshrank.apps.registry_cli import add_registry_commands
from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker
from freshrank.registry import Registry, save_checkpoint


def run(*argv):
    parser = argparse.ArgumentParser(prog="freshrank")
    add_registry_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["registry", *argv])
    return args.func(args)


@pytest.fixture
def reg(tmp_path):
    reg = Registry(tmp_path / "reg")
    cfg = RankerConfig(embedding_dim=2)
    for seed in range(3):
        torch.manual_seed(seed)
        save_checkpoint(
            reg,
            cfg,
            Ranker(cfg).state_dict(),
            None,
            {},
            {
                "cursor": seed,
                "watermark": 1.0,
                "metrics": {"loss": 0.5, "eval_auc": 0.6},
                "events_trained": 1,
                "window_events": 10,
            },
        )
    return reg


def test_list_show_log(reg, capsys):
    reg.set_champion(2)
    reg.pin(1)
    assert run("list", "--registry", str(reg.root)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(" P v1") and out[1].startswith("*  v2") and "auc 0.6000" in out[1]
    assert run("show", "--registry", str(reg.root)) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2
    assert run("show", "--registry", str(reg.root), "--version", "9") == 1
    assert "no version 9" in capsys.readouterr().err
    assert run("log", "--registry", str(reg.root), "--last", "1") == 0
    assert "pinned" in capsys.readouterr().out


def test_promote_rollback_pin_unpin(reg, capsys):
    root = str(reg.root)
    assert run("promote", "--registry", root, "1", "--reason", "ops") == 0
    assert run("promote", "--registry", root, "3") == 0
    assert reg.champion_version() == 3
    assert run("rollback", "--registry", root, "--reason", "bad ctr") == 0
    assert reg.champion_version() == 1 and "v3 -> v1" in capsys.readouterr().out
    assert reg.promotions()[-1]["reason"] == "bad ctr"
    assert run("rollback", "--registry", root) == 1  # nothing earlier than v1
    assert "no earlier champion" in capsys.readouterr().err
    assert run("pin", "--registry", root, "2") == 0 and reg.serving_target() == 2
    assert run("unpin", "--registry", root) == 0 and reg.serving_target() == 1
    assert run("promote", "--registry", root, "42") == 1
    assert [e["kind"] for e in reg.promotions()] == [
        "promoted",
        "promoted",
        "rolled_back",
        "pinned",
        "unpinned",
    ]


def test_corrupt_version_cannot_be_promoted_or_pinned(reg, capsys):
    (reg.get(2).path / "model.pt").write_bytes(b"oops")
    assert run("promote", "--registry", str(reg.root), "2") == 1
    assert run("pin", "--registry", str(reg.root), "2") == 1
    assert "model.pt" in capsys.readouterr().err
    assert reg.champion_version() is None and reg.pinned_version() is None
    assert run("list", "--registry", str(reg.root)) == 0  # listing still works


def test_gated_promotion_on_fresh_shards(reg, tmp_path, capsys):
    reg.set_champion(1)
    shard = tmp_path / "fresh.parquet"
    pq.write_table(Simulator(SimulatorConfig(seed=3)).generate(60), shard)
    status = run("promote", "--registry", str(reg.root), "2", "--fresh", str(shard))
    out = capsys.readouterr().out
    event = reg.promotions()[-1]
    assert event["to_version"] == 2 and event["kind"] in ("promoted", "rejected")
    assert event["challenger_metrics"]["rows"] > 200 and "champion_metrics" in event
    assert (status == 0) == (event["kind"] == "promoted") == (reg.champion_version() == 2)
    assert out.startswith(f"v2: {event['kind']}")


def test_prune(reg, capsys):
    reg.set_champion(1)
    assert run("prune", "--registry", str(reg.root), "--keep-last", "1") == 0
    assert reg.list_versions() == [1, 3] and "removed 1 version(s): [2]" in capsys.readouterr().out
