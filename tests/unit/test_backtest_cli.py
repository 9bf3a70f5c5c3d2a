"""``freshrank backtest`` and ``jobs/backtest.py``: options, config, JSON summary."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from freshrank.apps.backtest_cli import add_arguments, config_from_args, parse_periods
from freshrank.apps.cli import build_parser
from freshrank.apps.cli import main as freshrank_main
from freshrank.learn.backtest import DigineticaData, ParquetData, Schedule, SimulatorData
from freshrank.learn.strategies import CombinedConfig, LwFConfig, ReplayConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--data=simulator", "--sim-periods=2", "--sim-requests=50", "--sim-users=30",
    "--sim-items=30", "--arms=finetune,joint", "--user-buckets=32", "--item-buckets=32",
    "--query-buckets=32", "--embedding-dim=4", "--forgetting-requests=5",
]  # fmt: skip


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_parse_periods():
    assert parse_periods("0-2,5") == (0, 1, 2, 5)
    assert parse_periods(" 3 , 1-1,") == (3, 1)


def test_options_become_a_config():
    config = config_from_args(
        _args("--arms=static,replay+lwf,sliding", "--window=2", "--replay-ratio=0.25",
              "--lwf-alpha=0.5", "--sim-periods=4", "--shift-at=2", "--threads=0",
              "--forgetting-requests=0", "--embedding-dim=8")
    )  # fmt: skip
    assert isinstance(config.data, SimulatorData) and config.name == "simulator"
    assert (config.data.periods, config.data.shift_at) == (4, 2)
    assert [a.name for a in config.arms] == ["static", "replay+lwf", "sliding-2"]
    assert config.arms[2].schedule is Schedule.SLIDING and config.arms[2].window == 2
    parts = config.arms[1].strategy
    assert isinstance(parts, CombinedConfig)
    replay, lwf = parts.parts
    assert isinstance(replay, ReplayConfig) and replay.mix_ratio == 0.25
    assert isinstance(lwf, LwFConfig) and lwf.alpha == 0.5
    assert config.threads is None and config.forgetting_requests is None
    assert config.model.embedding_dim == 8


def test_diginetica_and_parquet_options(tmp_path):
    dg = config_from_args(
        _args("--data=diginetica", f"--diginetica-path={tmp_path}", "--periods=0-2",
              "--negatives=uniform", "--name=dg")
    )  # fmt: skip
    assert isinstance(dg.data, DigineticaData) and dg.data.periods == (0, 1, 2)
    assert dg.data.adapter.path == str(tmp_path) and dg.data.adapter.negatives.value == "uniform"
    pq = config_from_args(_args("--data=parquet", "--parquet", "a.parquet", "b.parquet"))
    assert isinstance(pq.data, ParquetData) and pq.data.paths == ("a.parquet", "b.parquet")
    with pytest.raises(ValueError, match="at least two periods"):
        config_from_args(_args("--data=parquet", "--parquet", "a.parquet"))


def test_freshrank_backtest_prints_a_json_summary(tmp_path, capsys):
    out = tmp_path / "deep" / "result.json"
    assert freshrank_main(["backtest", *TINY, f"--output={out}"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert [a["name"] for a in summary["arms"]] == ["finetune", "joint"]
    assert 0.0 <= summary["arms"][0]["mean"]["auc"] <= 1.0
    # two periods: both arms train once, on period 0
    assert summary["arms"][1]["events_trained"] == summary["arms"][0]["events_trained"] > 0
    assert "1/2 finetune tested on sim1" in captured.err  # progress lines on stderr
    full = json.loads(out.read_text())
    assert full["periods"] == ["sim0", "sim1"] and "accuracy" in full["arms"][0]
    assert "backtest" in build_parser().format_help()


def test_bad_options_are_reported_without_a_traceback(capsys):
    with pytest.raises(SystemExit):
        freshrank_main(["backtest", *TINY, "--batch-size=0"])
    assert "batch_size must be >= 1" in capsys.readouterr().err


def test_job_runs_from_the_command_line(capsys):
    spec = importlib.util.spec_from_file_location("backtest_job", ROOT / "jobs" / "backtest.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main([*TINY, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["name"] == "simulator" and captured.err == ""
    assert "bench" not in (ROOT / "jobs" / "backtest.py").read_text().split('"""')[2]
