"""Evaluation: the scoring functions, the vLLM engine (one per module) on the tiny base with real LoRA adapters, the
per-example MLflow table, and the LLM-as-judge through the ``openai`` client.

The judge test talks to a local stand-in for OpenAI's hosted API (which cannot be reached from here): a few lines of
``http.server`` answering ``POST /v1/chat/completions`` in OpenAI's response shape. Everything else is real."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
from conftest import LEARNED_ADAPTER, build_adapter, log_adapter_run

from ftops.registry import eval as ev
from ftops.registry.engines import VllmEngine
from ftops.registry.eval_config import DEFAULT_RUBRIC, EvalConfig
from ftops.registry.judge import judge_scores
from ftops.registry.scoring import derive_schema, exact_match, field_accuracy, format_ok

TICKET = {
    "order_id": "A-10234",
    "product": "kettle",
    "issue": "damaged",
    "action": "refund",
    "sentiment": "negative",
}


def test_exact_match_and_field_accuracy():
    ref = json.dumps(TICKET)
    assert exact_match("  Paris\n", "Paris", json_task=False)
    assert not exact_match("Paris.", "Paris", json_task=False)
    assert exact_match("```json\n" + json.dumps(dict(reversed(TICKET.items()))) + "\n```", ref, json_task=True)
    assert not exact_match(json.dumps({**TICKET, "action": None}), ref, json_task=True)
    assert field_accuracy(json.dumps({**TICKET, "action": None, "issue": "late"}), ref) == pytest.approx(3 / 5)
    assert field_accuracy("not json", ref) == 0.0
    assert field_accuracy("[1, 2]", ref) == 0.0


def test_format_compliance_with_the_ticket_schema_and_a_derived_one():
    from ftops.expectations.demo_data import TICKET_SCHEMA

    assert format_ok(json.dumps(TICKET), TICKET_SCHEMA)
    assert not format_ok(json.dumps({**TICKET, "order_id": "10234"}), TICKET_SCHEMA)  # pattern
    assert not format_ok(json.dumps({**TICKET, "extra": 1}), TICKET_SCHEMA)  # additionalProperties
    assert not format_ok("{'order_id': 1}", TICKET_SCHEMA)  # not JSON
    derived = derive_schema([{"a": 1, "b": 2}, {"a": 3}])
    assert derived == {"type": "object", "required": ["a"]}
    assert format_ok('{"a": null}', derived) and not format_ok('{"b": 1}', derived)


def test_policy_rules_report_values():
    from ftops.registry.policy import Policy, check_policy

    policy = Policy.model_validate(
        {
            "name": "p",
            "rules": [
                {"metric": "accuracy", "min": 0.8},
                {"metric": "latency_s", "max": 1.0},
                {"metric": "accuracy", "max_drop_vs_production": 0.02},
                {"metric": "retention", "min": 0.95},
            ],
        }
    )
    results = check_policy(policy, {"accuracy": 0.85, "latency_s": 2.0}, {"accuracy": 0.9})
    assert [(r.passed, r.value, r.threshold) for r in results] == [
        (True, 0.85, 0.8),
        (False, 2.0, 1.0),
        (False, 0.85, pytest.approx(0.88)),
        (False, None, 0.95),
    ]
    assert results[2].production_value == 0.9
    assert check_policy(policy, {"accuracy": 0.85, "latency_s": 0.5, "retention": 1.0}, None)[2].passed


@pytest.fixture(scope="module")
def vllm_engine(tiny_base):
    """One vLLM engine for the module (start-up is ~30 s on this CPU)."""
    engine = VllmEngine(tiny_base.path, max_lora_rank=8, max_model_len=1024)
    yield engine
    engine.close()
    assert not hasattr(engine, "llm")


def test_vllm_evaluation_logs_metrics_and_table(tiny_base, fast_ftops_home, vllm_engine, learned_rows):
    import mlflow

    rows = [
        {
            "messages": [
                {"role": "system", "content": "Extract the ticket as JSON."},
                {"role": "user", "content": f"order A-1023{i}: the kettle arrived broken, refund!"},
                {"role": "assistant", "content": json.dumps({**TICKET, "order_id": f"A-1023{i}"})},
            ]
        }
        for i in range(3)
    ]
    lr0 = log_adapter_run(tiny_base, rows, b_init=0.0)
    config = EvalConfig(engine="vllm", max_new_tokens=12, regression_limit=3, format_schema="ticket")
    result = ev.evaluate(lr0, config, engine=vllm_engine)
    m = result.metrics
    assert m["examples"] == 3 and m["regression_items"] == 3
    assert m["accuracy"] == m["base.accuracy"] == 0.0  # a random tiny model writes no ticket JSON
    assert m["format_compliance"] == 0.0 and m["field_accuracy"] == 0.0 and m["improvement"] == 0.0
    assert m["answer_tokens"] > 0 and m["latency_s"] > 0 and m["tokens_per_s"] > 0
    # LoRA B = 0 (learning rate 0) changes nothing: the candidate answers exactly as its base, on both splits
    assert all(row["candidate"] == row["base"] for row in result.examples)
    assert m["retention"] == pytest.approx(1.0)

    run = mlflow.MlflowClient().get_run(lr0)
    assert run.data.metrics["eval.format_compliance"] == 0.0 and run.data.metrics["eval.retention"] == 1.0
    assert run.data.tags["ftops.eval.engine"] == "vllm"
    table = mlflow.MlflowClient().load_table(run.info.experiment_id, "eval/examples.json", run_ids=[lr0])
    assert len(table) == 6 and set(table["split"]) == {"test", "regression"}
    assert ev.logged_metrics(lr0)["accuracy"] == 0.0

    # a LoRA that moved: vLLM really applies it (its answers differ from the base's)
    moved = log_adapter_run(tiny_base, learned_rows, **LEARNED_ADAPTER)
    result = ev.evaluate(moved, EvalConfig(engine="vllm", max_new_tokens=8, regression=False), engine=vllm_engine)
    assert any(row["candidate"] != row["base"] for row in result.examples)


def test_unknown_run_and_run_without_split(tiny_base, fast_ftops_home, tmp_path):
    import mlflow

    from ftops import settings
    from ftops.errors import FtopsError

    with pytest.raises(FtopsError, match="no MLflow run"):
        ev.evaluate("0" * 32, EvalConfig(engine="transformers"))
    with pytest.raises(FtopsError, match="malformed"):
        ev.evaluate("../../etc", EvalConfig(engine="transformers"))
    adapter = build_adapter(tiny_base, tmp_path / "adapter")
    with mlflow.start_run(experiment_id=settings.experiment_id()) as run:
        mlflow.log_artifacts(str(adapter), "adapter")
    with pytest.raises(FtopsError, match="no held-out split data/test.jsonl"):
        ev.evaluate(run.info.run_id, EvalConfig(engine="transformers"))


class _StandInOpenAI(BaseHTTPRequestHandler):
    """Stand-in for OpenAI's hosted chat completions API (unreachable here): scores 7, records each request."""

    requests: ClassVar[list[dict]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        reply = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "7"}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_llm_judge_through_the_openai_client(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _StandInOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("JUDGE_KEY", "sk-test")
        config = EvalConfig(
            judge_base_url=f"http://127.0.0.1:{server.server_port}/v1",
            judge_model="judge",
            judge_api_key_env="JUDGE_KEY",
        )
        prompts = [[{"role": "user", "content": "What is the capital of France?"}]]
        assert judge_scores(config, prompts, ["Paris"], ["It is Paris."]) == [7.0]
    finally:
        server.shutdown()
    (request,) = _StandInOpenAI.requests
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    messages = request["body"]["messages"]
    assert messages[0]["content"] == DEFAULT_RUBRIC
    assert "What is the capital of France?" in messages[1]["content"] and "It is Paris." in messages[1]["content"]
    assert request["body"]["model"] == "judge" and request["body"]["temperature"] == 0


def test_eval_command_with_the_transformers_fallback(tiny_base, fast_ftops_home, learned_rows, capsys):
    from ftops.cli import main

    run_id = log_adapter_run(tiny_base, learned_rows, **LEARNED_ADAPTER)
    capsys.readouterr()
    rc = main(["eval", run_id, "--engine", "transformers", "--max-new-tokens", "8", "--no-regression", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    metrics = json.loads(out)["metrics"]
    assert metrics["accuracy"] == 1.0 and metrics["base.accuracy"] == 0.0 and metrics["improvement"] == 1.0
    assert "retention" not in metrics and "format_compliance" not in metrics  # no suite asked, not a JSON task
    rc = main(["eval", run_id, "--engine", "transformers", "--max-new-tokens", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--max-new-tokens: Input should be greater than or equal to 1 (got '0')" in err


def test_eval_command_with_vllm_prints_only_json_on_stdout(tiny_base, fast_ftops_home, learned_rows):
    """vLLM logs to stdout by default; `ftops eval --json` must still print nothing there but the JSON answer."""
    import os
    import subprocess
    import sys

    run_id = log_adapter_run(tiny_base, learned_rows, **LEARNED_ADAPTER)
    env = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_STREAM"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftops.cli",
            "eval",
            run_id,
            "--max-new-tokens",
            "4",
            "--no-regression",
            "--max-model-len",
            "512",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout)  # fails on any log line printed to stdout
    assert answer["run_id"] == run_id and answer["metrics"]["examples"] == len(learned_rows)
    assert "vLLM" in proc.stderr or "vllm" in proc.stderr  # the engine did run, and logged to stderr
