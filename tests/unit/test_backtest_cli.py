"""``freshrank backtest`` and ``jobs/backtest.py``: options, config, JSON summary."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from freshrank.apps.backtest_cli import add_arguments, config_from_args, parse_periods
from freshrank.apps.backtest_cli import main as backtest_main
from freshrank.apps.cli import build_parser, dataclass_from_args
from freshrank.apps.cli import main as freshrank_main
from freshrank.learn.backtest import (
    Candidate,
    DigineticaData,
    ParquetData,
    Schedule,
    SimulatorData,
    default_candidates,
)
from freshrank.learn.config import TrainConfig
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


SELECT = [
    "--data=simulator", "--sim-periods=5", "--sim-requests=60", "--sim-users=30",
    "--sim-items=30", "--user-buckets=32", "--item-buckets=32", "--query-buckets=32",
    "--embedding-dim=4", "--forgetting-requests=5", "--select", "--seeds=0,1",
    "--select-learning-rates=", "--k=3",
]  # fmt: skip


def test_select_prints_the_search_the_test_figures_and_the_live_command(tmp_path, capsys):
    out = tmp_path / "selection.json"
    assert freshrank_main(["backtest", *SELECT, f"--output={out}"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["selection_periods"] == ["sim1", "sim2"]
    assert result["test_periods"] == ["sim3", "sim4"]
    assert result["metrics"] == ["recall@3", "mrr@3"]
    tried = {c["name"] for c in result["candidates"]}
    assert len(tried) == len(default_candidates())  # no stage 2 with no other rates
    assert all(len(c["figures"]["mrr@3"]["values"]) == 2 for c in result["candidates"])
    assert set(result["final"]) >= {"finetune", "joint"}
    flags = " ".join(result["train_flags"])
    assert f"freshrank train --landing LANDING --registry REGISTRY {flags}" in captured.err
    assert "on the test periods (reported once, after choosing):" in captured.err
    assert result["message"] in captured.err
    assert json.loads(out.read_text())["message"] == result["message"]


def test_select_on_too_few_periods_says_how_many_it_needs(capsys):
    argv = [a if a != "--sim-periods=5" else "--sim-periods=4" for a in SELECT]
    with pytest.raises(SystemExit):
        backtest_main(argv)
    assert "at least 5 periods" in capsys.readouterr().err


@pytest.mark.parametrize(
    "candidate",
    (*default_candidates(), Candidate("replay", replay_capacity=1_000_000, replay_ratio=0.75)),
    ids=lambda c: c.name,
)
def test_a_candidates_flags_run_it_live_as_searched(candidate):
    args = build_parser().parse_args(
        ["train", "--landing", "l", "--registry", "r", *candidate.train_flags(0.02)]
    )
    config = dataclass_from_args(TrainConfig, args)
    assert config.strategy_config() == candidate.strategy_config()
    assert config.learning_rate == 0.02
