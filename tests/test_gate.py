"""The promotion gate on real MLflow (temporary SQLite store) with the transformers engine on the tiny base.

A passing candidate is the ``LEARNED_ADAPTER`` on ``learned_rows`` (held-out references are what it answers; its base
answers otherwise); a failing one is the same task with LoRA B = 0, exactly an adapter trained with learning rate 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import LEARNED_ADAPTER, log_adapter_run

from ftops import adapter as fa
from ftops.cli import main

FAST = ["--engine", "transformers", "--max-new-tokens", "8", "--regression-limit", "4"]
POLICY = """\
# ftops gate RUN_ID --policy THIS_FILE
name: test
rules:
  - {metric: accuracy, min: 0.8}
  - {metric: improvement, min: 0.5}
  - {metric: retention, min: 0.95}
  - {metric: accuracy, max_drop_vs_production: 0.02}
"""


@pytest.fixture
def policy(tmp_path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def _client():
    import mlflow

    from ftops import settings

    settings.configure_mlflow()
    return mlflow.MlflowClient()


def _gate(capsys, run_id: str, policy: Path, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["gate", run_id, "--policy", str(policy), "--name", "tickets", *FAST, *extra])
    out, err = capsys.readouterr()
    return rc, out, err


def test_passing_candidate_becomes_staging_version_with_lineage(
    tiny_base, fast_ftops_home, learned_rows, policy, capsys, tmp_path
):
    run_id = log_adapter_run(tiny_base, learned_rows, **LEARNED_ADAPTER)
    rc, out, _ = _gate(capsys, run_id, policy, "--json")
    assert rc == 0, out
    report = json.loads(out)
    assert report["verdict"] == "pass" and report["version"] == "1"
    assert report["metrics"]["accuracy"] == 1.0 and report["metrics"]["base.accuracy"] == 0.0
    assert [r["passed"] for r in report["rules"]] == [True, True, True, True]
    assert report["metrics"]["regression_items"] == 4 and 0 <= report["metrics"]["retention"]

    client = _client()
    assert str(client.get_model_version_by_alias("tickets", "staging").version) == "1"
    mv = client.get_model_version("tickets", "1")
    assert mv.run_id == run_id
    tags = mv.tags
    assert tags[fa.TAG_RUN_ID] == run_id
    assert tags[fa.TAG_BASE_NAME] == "tiny-llama" and tags[fa.TAG_BASE_SHA256] == tiny_base.sha256
    assert tags[fa.TAG_LORA_R] == "8" and tags[fa.TAG_LORA_TARGETS] == "q_proj,v_proj"
    assert tags[fa.TAG_QUANTIZATION] == "none"
    assert tags[fa.TAG_DATASET_PREFIX + "test.digest"] == "0" * 64
    assert tags[fa.TAG_GATE_VERDICT] == "pass" and tags[fa.TAG_GATE_POLICY] == "test"
    assert float(tags[fa.TAG_METRIC_PREFIX + "improvement"]) == 1.0
    assert "Gate PASS" in mv.description and "improvement >= 0.5" in mv.description
    assert "production" not in (client.get_registered_model("tickets").aliases or {})

    run = client.get_run(run_id)
    assert run.data.tags[fa.TAG_GATE_VERDICT] == "pass"
    assert run.data.metrics["eval.accuracy"] == 1.0
    report_json = json.loads(Path(client.download_artifacts(run_id, "gate/report.json", str(tmp_path))).read_text())
    assert report_json["version"] == "1"

    # serving's contract: the version's source downloads and verifies as an adapter
    folder, manifest = fa.download_adapter("models:/tickets/1", tmp_path / "dl")
    assert manifest["base"]["sha256"] == tiny_base.sha256 and (folder / "adapter_model.safetensors").is_file()


def test_learning_rate_zero_fails_registers_nothing_moves_nothing(
    tiny_base, fast_ftops_home, learned_rows, policy, capsys
):
    good = log_adapter_run(tiny_base, learned_rows, **LEARNED_ADAPTER)
    assert _gate(capsys, good, policy)[0] == 0
    lr0 = log_adapter_run(tiny_base, learned_rows, b_init=0.0)
    rc, out, err = _gate(capsys, lr0, policy)
    assert rc == 1
    assert "Gate FAIL" in out and "| accuracy >= 0.8 | 0 | 0.8 |  | **FAIL** |" in out
    assert "nothing registered" in err
    client = _client()
    versions = client.search_model_versions("name='tickets'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", good)]
    assert str(client.get_model_version_by_alias("tickets", "staging").version) == "1"
    run = client.get_run(lr0)
    assert run.data.tags[fa.TAG_GATE_VERDICT] == "fail"
    assert run.data.metrics["eval.improvement"] == 0.0  # B = 0: the candidate answers exactly as its base
    assert "gate/report.md" in {f.path for f in client.list_artifacts(lr0, "gate")}


def _one_error_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_input_is_one_clear_error_and_registers_nothing(
    tiny_base, fast_ftops_home, learned_rows, policy, capsys, tmp_path
):
    import mlflow

    from ftops import settings

    run_id = log_adapter_run(tiny_base, learned_rows, b_init=0.0)
    with mlflow.start_run(experiment_id=settings.experiment_id()) as bare:
        mlflow.log_param("lr", 0.1)

    rc, _, err = _gate(capsys, "0123456789abcdef0123456789abcdef", policy)
    assert rc == 1
    _one_error_line(err, "no MLflow run", "0123456789abcdef")

    rc, _, err = _gate(capsys, bare.info.run_id, policy)
    assert rc == 1
    _one_error_line(err, "has no adapter artifact")

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("name: x\nrules:\n  - {metric: accuracy, min: 0.8}\n  - {metric: acuracy, min: 0.9}\n")
    rc, _, err = _gate(capsys, run_id, unknown)
    assert rc == 1
    _one_error_line(err, "unknown.yaml", "rule 2", "'acuracy'", "known:")

    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("name: x\nrules:\n  - {metric: accuracy, min: 0.8\n")
    rc, _, err = _gate(capsys, run_id, malformed)
    assert rc == 1
    _one_error_line(err, "malformed.yaml", "not valid YAML")

    two = tmp_path / "two.yaml"
    two.write_text("name: x\nrules:\n  - {metric: accuracy, min: 0.8, max: 0.9}\n")
    rc, _, err = _gate(capsys, run_id, two)
    assert rc == 1
    _one_error_line(err, "two.yaml", "rules.0", "exactly one of")

    rc, _, err = _gate(capsys, run_id, tmp_path / "missing.yaml")
    assert rc == 1
    _one_error_line(err, "missing.yaml", "no such policy")

    capsys.readouterr()
    rc = main(["gate", run_id, "--name", "../etc", *FAST])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, "invalid registered model name")

    client = _client()
    assert client.search_registered_models() == []
    assert "eval.accuracy" not in client.get_run(run_id).data.metrics  # refused before any evaluation


def test_tampered_adapter_is_refused(tiny_base, fast_ftops_home, learned_rows, policy, capsys):
    from urllib.parse import urlparse

    run_id = log_adapter_run(tiny_base, learned_rows, **LEARNED_ADAPTER)
    artifacts = Path(urlparse(_client().get_run(run_id).info.artifact_uri).path)
    weights = artifacts / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    rc, _, err = _gate(capsys, run_id, policy)
    assert rc == 1
    _one_error_line(err, "adapter_model.safetensors", "sha256 does not match")
    assert _client().search_registered_models() == []


def test_shipped_policies_load():
    from ftops.registry.eval import METRICS
    from ftops.registry.policy import POLICIES_DIR, load_policy

    files = sorted(POLICIES_DIR.glob("*.yaml"))
    assert files
    for path in files:
        assert path.read_text().startswith("# ftops gate"), path
        policy = load_policy(path, METRICS)
        assert policy.rules


def test_adapter_trained_one_step_fails_the_default_policy(tiny_base, fast_ftops_home, tmp_path, capsys):
    """A real `ftops train` job (ftops.training.job.train, LoRA, one optimizer step) on the demo's ticket task: the
    shipped default policy refuses it (no task accuracy, no improvement over the base) and registers nothing."""
    from ftops.expectations.demo_data import generate_tickets
    from ftops.training.config import TrainConfig
    from ftops.training.job import train

    tickets = generate_tickets(30, seed=3)
    paths = {}
    for split, rows in {"train": tickets[:10], "validation": tickets[10:20], "test": tickets[20:]}.items():
        paths[split] = tmp_path / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = TrainConfig.model_validate(
        {
            "base": "tiny-llama",
            "data": {k: str(v) for k, v in paths.items()},
            "method": "lora",
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            "max_steps": 1,
            "batch_size": 4,
            "max_seq_length": 256,
            "gradient_checkpointing": False,
            "eval_steps": 1,
            "save_steps": 1,
            "logging_steps": 1,
            "progress": False,
        }
    )
    run_id = train(config)
    capsys.readouterr()
    rc = main(["gate", run_id, "--name", "tickets", "--schema", "ticket", "--max-examples", "4", *FAST])
    out, err = capsys.readouterr()
    assert rc == 1, out + err
    assert "policy `default`" in out and "| accuracy >= 0.8 | 0 | 0.8 |  | **FAIL** |" in out
    assert "| format_compliance >= 0.95 | 0 | 0.95 |  | **FAIL** |" in out
    client = _client()
    assert client.search_registered_models() == []
    assert client.get_run(run_id).data.tags[fa.TAG_GATE_VERDICT] == "fail"
