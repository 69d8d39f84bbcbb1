"""One end-to-end test of the whole flow: ``ftops demo`` as a user runs it, on the tiny base so it takes minutes.

data -> train (QLoRA, 2 steps) -> gate (real vLLM eval of adapter and base) -> registered version promoted to
production -> ``ftops serve`` (BentoML + vLLM) answering through the openai client -> ledger -> cost report.
The tiny model answers gibberish, so the gate policy here only asks that every metric exists and is in range: what
this test proves is that the stages connect, not that the adapter is good (the real demo's gate does that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow

from ftops import settings

POLICY = """\
# ftops gate RUN_ID --policy e2e.yaml (tests/test_e2e.py: the stages connect; the tiny model cannot be good)
name: e2e
rules:
  - metric: format_compliance
    min: 0.0
  - metric: field_accuracy
    min: 0.0
  - metric: retention
    min: 0.0
"""


def test_demo_runs_the_whole_flow_on_the_tiny_base(tiny_base, ftops_home, tmp_path):
    policy = tmp_path / "e2e.yaml"
    policy.write_text(POLICY)
    cmd = [
        sys.executable,
        "-m",
        "ftops.cli",
        "demo",
        "--base",
        tiny_base.name,
        "--examples",
        "200",
        "--replay",
        "0",  # the random tiny model never ends an answer, so it has no replay data to give
        "--questions",
        "2",
        "--advise-examples",  # the advice closes the flow: bounded to a few answers per option, like the questions
        "2",
        "--advise-regression",
        "2",
        "--policy",
        str(policy),
        "--set",
        "max_steps=2",
        "--set",
        "eval_steps=2",
        "--set",
        "save_steps=2",
        "--set",
        "progress=false",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=dict(os.environ))
    out = result.stdout
    assert result.returncode == 0, (out[-4000:], result.stderr[-4000:])
    for step in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"):
        assert step in out
    assert "advice: " in out and (Path(ftops_home) / "demo" / "advise" / "report.md").is_file()

    settings.configure_mlflow()
    client = mlflow.MlflowClient()
    production = client.get_model_version_by_alias("ticket-extractor", "production")
    run_id = production.run_id
    assert production.tags["ftops.gate.verdict"] == "pass"
    assert production.tags["ftops.base.name"] == tiny_base.name
    assert production.tags["ftops.base.sha256"] == tiny_base.sha256
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert {"eval.field_accuracy", "eval.base.field_accuracy", "eval.retention"} <= set(run.data.metrics)

    # both the adapter and the base answered over HTTP, with usage, and every request is in the ledger
    assert out.count("adapter  :") == 3 and out.count("base     :") == 3  # 2 tickets + 1 general question
    from ftops.serving.ledger import Ledger

    with Ledger(None, create=False) as ledger:
        rows = ledger.rows()
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["model"] == tiny_base.name for r in ok)
    assert [r["registry_version"] for r in ok if r["adapter"] == "ticket-extractor"] == [str(production.version)] * 3
    assert len([r for r in ok if r["adapter"] is None]) == 3
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 for r in rows if r["status"] == "ok")

    # the cost report printed and charted what the ledger holds
    chart = Path(ftops_home) / "demo" / "cost.png"
    assert chart.is_file() and chart.stat().st_size > 10_000
    report = subprocess.run(
        [sys.executable, "-m", "ftops.cli", "cost", "report", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert report.returncode == 0, report.stderr
    total = json.loads(report.stdout)["total"]
    assert total["requests"] == len(rows)
    assert total["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows)
