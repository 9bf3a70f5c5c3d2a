"""The bench harness of the backtests (bench/backtest_harness.py): report files, markdown
tables, PNG plots, tqdm progress and its command line."""

from __future__ import annotations

import json

import backtest_harness as harness
import numpy as np
import pytest
from test_backtest import ARMS, DATA, _config

from freshrank.events.simulator import SimulatorConfig
from freshrank.learn.backtest import BacktestProgress, run_periods, run_seeds


@pytest.fixture(scope="module")
def report():
    return run_periods(DATA.load(), _config(arms=(ARMS[0], ARMS[1], ARMS[3])))


def test_report_files_are_written(report, tmp_path):
    files = harness.write_report(report, tmp_path / "out")
    assert {"report.md", "report.json", "metrics_per_period.png"} <= set(files)
    assert all((tmp_path / "out" / f).stat().st_size > 0 for f in files)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data == json.loads(json.dumps(report.to_dict()))
    assert (tmp_path / "out" / "metrics_per_period.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "out" / "prequential_recall_at_3.png").exists()
    text = (tmp_path / "out" / "report.md").read_text()
    assert text.startswith("# Backtest: tiny") and "| joint |" in text
    assert "## Prequential AUC per period" in text and "## New items" in text


def test_markdown_tables(report):
    table = harness.comparison_markdown(report)
    lines = table.splitlines()
    assert lines[0].startswith("| strategy | Recall@3 | MRR@3 | AUC |") and "vs joint" in lines[0]
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| static", "| finetune", "| joint"]
    joint_row = lines[-1].split(" | ")
    assert joint_row[-2] == "100.0%"  # joint's events against its own
    finetune = report.arm("finetune")
    assert f"{finetune.mean['auc']:.4f}" in lines[3]
    ages = harness.item_age_markdown(report)
    clicks = report.arms[0].clicks_by_item_age()
    assert f"Recall@3 new ({clicks['new']:,} clicks)" in ages
    assert harness._fmt(float("nan")) == "—" and harness._fmt(0.1, signed=True) == "+0.1000"
    assert harness._label("recall@20") == "Recall@20" and harness._label("logloss") == "log loss"


def test_spread_table_over_seeds_says_above_below_or_within_noise():
    config = _config(arms=(ARMS[0], ARMS[1], ARMS[3]), learning_rate=0.02)
    reports = run_seeds(config, (0, 1, 2), periods=DATA.load())
    table = harness.spread_markdown(reports)
    lines = table.splitlines()
    assert lines[0].startswith("| strategy | Recall@3 | MRR@3 | AUC |")
    assert lines[0].endswith("| BWT Recall@3 | events vs joint | vs finetune |")
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines[2:]}
    assert set(rows) == {"static", "finetune", "joint"}
    aucs = [r.arm("static").mean["auc"] for r in reports]
    assert rows["static"][3] == f"{np.mean(aucs):.4f} [{min(aucs):.4f}, {max(aucs):.4f}]"
    assert rows["finetune"][-1] == "— |" and rows["joint"][-2] == "100.0%"
    verdicts = rows["static"][-1].removesuffix(" |").split(", ")
    assert [v.split(": ")[0] for v in verdicts] == ["Recall@3", "MRR@3"]
    assert all(v.split(": ")[1] in {"above", "below", "within noise"} for v in verdicts)


def test_tqdm_progress_follows_the_callbacks(capsys):
    bar = harness.TqdmProgress("tiny")
    for done in (1, 2, 3):
        bar(BacktestProgress("finetune", f"sim{done}", done, 3, {"recall@3": 0.5, "auc": 0.6}))
    assert bar._bar.n == 3 and bar._bar.total == 3
    bar.close()
    harness.TqdmProgress("unused").close()  # no bar made: nothing to close


def test_run_writes_into_the_output_dir_or_nowhere(tmp_path):
    config = _config(arms=ARMS[1:2], forgetting_requests=None)
    written = harness.run(config, tmp_path / "r", progress=False)
    assert written.output_dir == tmp_path / "r" and "report.md" in written.files
    assert (tmp_path / "r" / "report.json").exists()
    quiet = harness.run(config, progress=False, write=False)
    assert quiet.output_dir is None and quiet.files == ()
    assert harness.default_output_dir("x") == harness.OUT / "backtest-x"
    assert harness.OUT.parts[-2:] == ("bench", "out")


def test_harness_command_line(tmp_path, capsys):
    sim = SimulatorConfig()
    assert sim.n_users > 30  # the flags below make it smaller
    argv = [
        "--data=simulator", "--sim-periods=2", "--sim-requests=50", "--sim-users=30",
        "--sim-items=30", "--arms=finetune,joint", "--user-buckets=32", "--item-buckets=32",
        "--query-buckets=32", "--embedding-dim=4", f"--output-dir={tmp_path}", "--no-progress",
    ]  # fmt: skip
    assert harness.main(argv) == 0
    out = capsys.readouterr().out
    assert "| finetune |" in out and "| joint |" in out and f"report: {tmp_path}/" in out
    assert (tmp_path / "report.md").exists() and (tmp_path / "metrics_per_period.png").exists()


def test_benches_skip_diginetica_with_a_reason_when_it_is_absent(tmp_path, capsys):
    assert harness.diginetica_directory(str(tmp_path), "bench_x") is None
    out = capsys.readouterr().out
    assert out.startswith(f"[bench_x] DIGINETICA skipped: no period_*.txt in {tmp_path}")
    (tmp_path / "period_0.txt").write_text("")
    assert harness.diginetica_directory(str(tmp_path), "bench_x") == tmp_path
