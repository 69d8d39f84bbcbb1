"""The gate's chain of proof (issue 14): metrics are reused only from an evaluation with the same settings, the
held-out split must be disjoint from what was trained on, and a registry that cannot be read stops gate and promote.

Real MLflow throughout: a temporary SQLite store, and for the registry errors a real ``mlflow server`` process that
the test stops. The transformers engine on the tiny base, as in ``test_gate.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import LEARNED_ADAPTER, log_adapter_run, start_mlflow_server, stop_mlflow_server
from test_gate import POLICY, _client, _gate, _one_error_line

from ftops import adapter as fa
from ftops.cli import main
from ftops.manifest import sha256_file


@pytest.fixture
def policy(tmp_path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def _log_metrics(run_id: str, metrics: dict[str, float]) -> None:
    client = _client()
    for k, v in metrics.items():
        client.log_metric(run_id, f"eval.{k}", v)


# ------------------------------------------------------------------------------------------- eval provenance


def test_metrics_of_other_settings_are_not_reused_and_the_hash_is_tagged(
    tiny_base, fast_ftops_home, learned_rows, policy, capsys, tmp_path
):
    from ftops.registry import eval as ev
    from ftops.registry.eval_config import EvalConfig

    run_id = log_adapter_run(tiny_base, learned_rows, **LEARNED_ADAPTER)
    small = EvalConfig(engine="transformers", max_new_tokens=8, regression_limit=4, max_examples=2)
    partial = ev.evaluate(run_id, small)
    assert partial.metrics["examples"] == 2

    rc, out, err = _gate(capsys, run_id, policy, "--json")
    assert rc == 0, out + err
    report = json.loads(out)
    assert report["metrics"]["examples"] == 4  # evaluated again on the whole split, not the 2-example run's figures
    assert report["eval_reused"] is False

    client = _client()
    run = client.get_run(run_id)
    sha = run.data.tags[fa.TAG_EVAL_SETTINGS]
    assert sha != partial.settings_sha256 and sha == report["eval_settings_sha256"]
    assert client.get_model_version("tickets", report["version"]).tags[fa.TAG_EVAL_SETTINGS] == sha
    logged = json.loads(Path(client.download_artifacts(run_id, ev.SETTINGS_ARTIFACT, str(tmp_path))).read_text())
    test_split = Path(client.download_artifacts(run_id, ev.TEST_SPLIT_ARTIFACT, str(tmp_path)))
    assert logged["sha256"] == sha and ev.settings_sha256(logged["settings"]) == sha
    settings = logged["settings"]
    assert settings["max_examples"] is None and settings["engine"] == "transformers"
    assert settings["test_split_sha256"] == sha256_file(test_split)
    assert settings["base_sha256"] == tiny_base.sha256
    assert settings["regression"]["items"] == 4 and len(settings["regression"]["sha256"]) == 64

    # the same settings again: the logged evaluation is reused, under the same hash
    rc, out, err = _gate(capsys, run_id, policy, "--json")
    assert rc == 0, out + err
    again = json.loads(out)
    assert again["eval_reused"] is True and again["eval_settings_sha256"] == sha
    assert again["metrics"] == report["metrics"]

    # other limits are another evaluation
    rc, out, err = _gate(capsys, run_id, policy, "--json", "--max-examples", "3")
    again = json.loads(out)
    assert again["eval_reused"] is False and again["metrics"]["examples"] == 3


def test_hand_logged_metrics_are_never_reused(tiny_base, fast_ftops_home, learned_rows, policy, capsys):
    lr0 = log_adapter_run(tiny_base, learned_rows, b_init=0.0)  # answers exactly as its base: fails the policy
    perfect = {"accuracy": 1.0, "base.accuracy": 0.0, "improvement": 1.0, "retention": 1.0, "examples": 4.0}
    _log_metrics(lr0, perfect)  # no settings tag at all
    rc, out, _ = _gate(capsys, lr0, policy, "--json")
    assert rc == 1
    report = json.loads(out)
    assert report["verdict"] == "fail" and report["metrics"]["accuracy"] == 0.0 and report["eval_reused"] is False

    # now the run carries a real evaluation and its tag; metrics logged by hand on top of it are not that evaluation
    assert _client().get_run(lr0).data.tags[fa.TAG_EVAL_SETTINGS] == report["eval_settings_sha256"]
    _log_metrics(lr0, perfect)
    rc, out, _ = _gate(capsys, lr0, policy, "--json")
    assert rc == 1
    report = json.loads(out)
    assert report["metrics"]["accuracy"] == 0.0 and report["eval_reused"] is False
    assert _client().search_registered_models() == []


# ------------------------------------------------------------------------------------------- held-out overlap


def _shout(row: dict) -> dict:
    """The same example with case, spacing and punctuation changed."""
    msgs = [
        {**m, "content": "  " + m["content"].upper().replace(":", " ;").replace(".", "!!") + " "}
        for m in row["messages"]
    ]
    return {"messages": msgs}


def test_held_out_split_overlapping_training_or_replay_is_refused(
    tiny_base, fast_ftops_home, learned_rows, policy, capsys
):
    other = {"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]}
    cases = {
        "exact duplicate in train": {"train_rows": [other, learned_rows[1]]},
        "normalised duplicate in replay": {"train_rows": [other], "replay_rows": [_shout(learned_rows[2])]},
    }
    for label, data in cases.items():
        run_id = log_adapter_run(tiny_base, learned_rows, **LEARNED_ADAPTER, **data)
        rc, _, err = _gate(capsys, run_id, policy)
        assert rc == 1, label
        _one_error_line(err, run_id, "1 of 4 held-out examples", "disjoint")
        line = err.strip()
        if "exact" in label:
            assert "test line 2 = train line 2" in line
        else:
            assert "test line 3 ~ replay line 1" in line
        assert "eval.accuracy" not in _client().get_run(run_id).data.metrics, label  # refused before evaluating
    assert _client().search_registered_models() == []

    # same prompt, another answer, and another prompt with the same answer: no overlap
    near = [
        {"messages": [learned_rows[0]["messages"][0], {"role": "assistant", "content": "something else"}]},
        {"messages": [{"role": "user", "content": "Another ticket."}, learned_rows[0]["messages"][-1]]},
    ]
    run_id = log_adapter_run(tiny_base, learned_rows, **LEARNED_ADAPTER, train_rows=near)
    rc, out, err = _gate(capsys, run_id, policy)
    assert rc == 0, out + err


# ------------------------------------------------------------------------------------------- registry read errors


@pytest.fixture
def registry_server(tmp_path, migrated_mlflow_db):
    """A real ``mlflow server`` on a copy of the migrated empty store; yields ``(url, process)``."""
    import shutil

    db = tmp_path / "registry.db"
    shutil.copy(migrated_mlflow_db, db)
    url, proc = start_mlflow_server(f"sqlite:///{db}", tmp_path)
    try:
        yield url, proc
    finally:
        stop_mlflow_server(proc)


def test_a_registry_that_cannot_be_read_stops_gate_and_promote(
    tiny_base, fast_ftops_home, learned_rows, policy, capsys, monkeypatch, registry_server
):
    """Tracking in the local store, the registry on a real server: gate and promote work while it runs; once it is
    stopped, gate (which needs the production version for ``max_drop_vs_production``) and promote stop with one line
    naming the model, instead of taking the unreachable registry for "no production version"."""
    uri, proc = registry_server
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

    good = log_adapter_run(tiny_base, learned_rows, **LEARNED_ADAPTER)
    rc, out, err = _gate(capsys, good, policy, "--json")
    assert rc == 0, out + err
    assert json.loads(out)["production_version"] is None  # the model did not exist: that is "none"
    capsys.readouterr()
    assert main(["promote", "tickets", "--to", "production"]) == 0, capsys.readouterr()
    assert str(_client().get_model_version_by_alias("tickets", "production").version) == "1"

    stop_mlflow_server(proc)
    candidate = log_adapter_run(tiny_base, learned_rows, **LEARNED_ADAPTER)
    rc, out, err = _gate(capsys, candidate, policy)
    assert rc == 1, out + err
    _one_error_line(err, "tickets", "cannot read", "registry")
    run = _client().get_run(candidate)
    assert fa.TAG_GATE_VERDICT not in run.data.tags and "eval.accuracy" not in run.data.metrics

    capsys.readouterr()
    rc = main(["promote", "tickets", "--to", "production"])
    assert rc == 1
    _one_error_line(capsys.readouterr().err, "tickets", "cannot read", "registry")
