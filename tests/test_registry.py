"""The registry lifecycle on real MLflow (temporary SQLite store): promote, rollback, a move made in the MLflow UI,
two promotions at once, and `ftops models`. Versions come from real gate runs (transformers engine, tiny base)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import LEARNED_ADAPTER, log_adapter_run

from ftops.cli import main

LENIENT = (
    "# ftops gate RUN_ID --policy THIS_FILE\nname: lenient\nrules:\n  - {metric: accuracy, min: 0.0}\n"
    "  - {metric: accuracy, max_drop_vs_production: 0.02}\n"
)


@pytest.fixture
def gate_run(tiny_base, fast_ftops_home, tmp_path):
    """``gate_run(run_id)`` gates a run into model ``tickets`` with the lenient policy; returns the version."""
    from ftops.registry.eval_config import EvalConfig
    from ftops.registry.gate import gate

    policy = tmp_path / "lenient.yaml"
    policy.write_text(LENIENT)
    config = EvalConfig(engine="transformers", max_new_tokens=8, regression=False)

    def run(run_id: str) -> str:
        report = gate(run_id, policy, "tickets", config)
        assert report.verdict == "pass", report.markdown()
        return report.version

    return run


def _client():
    import mlflow

    from ftops import settings

    settings.configure_mlflow()
    return mlflow.MlflowClient()


def _alias(alias: str) -> str | None:
    from ftops.adapter import alias_version

    return alias_version("tickets", alias, _client())


def _history() -> list[str]:
    return json.loads(_client().get_registered_model("tickets").tags["ftops.production.history"])


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_promote_rollback_and_a_move_in_the_ui(tiny_base, learned_rows, gate_run, capsys):
    weak = log_adapter_run(tiny_base, learned_rows, b_init=0.0)  # accuracy 0
    strong = log_adapter_run(tiny_base, learned_rows, **LEARNED_ADAPTER)  # accuracy 1
    assert gate_run(weak) == "1" and _alias("staging") == "1"
    assert gate_run(strong) == "2" and _alias("staging") == "2"
    assert _alias("production") is None

    rc, out, _ = _cli(capsys, "promote", "tickets", "--to", "production", "--json")
    assert rc == 0, out
    assert json.loads(out) | {"checks": []} == {
        "name": "tickets",
        "version": "2",
        "previous": None,
        "history": ["2"],
        "checks": [],
    }
    assert _alias("production") == "2" and _history() == ["2"]

    # the weak version passed its gate when nothing was in production, but is worse than production now
    rc, _, err = _cli(capsys, "promote", "tickets", "--to", "production", "--version", "1")
    assert rc == 1
    assert "worse than production version 2" in err and "accuracy" in err and len(err.strip().splitlines()) == 1
    assert _alias("production") == "2" and _history() == ["2"]

    assert gate_run(strong) == "3"
    rc, out, _ = _cli(capsys, "promote", "tickets", "--to", "production")
    assert rc == 0 and "version 2 -> 3" in out
    assert _alias("production") == "3" and _history() == ["2", "3"]

    # moving the alias in the MLflow UI is a promotion too: rollback returns to what was production before it
    _client().set_registered_model_alias("tickets", "production", "1")
    rc, out, _ = _cli(capsys, "rollback", "tickets", "--json")
    assert rc == 0 and json.loads(out)["version"] == "3" and json.loads(out)["previous"] == "1"
    assert _alias("production") == "3" and _history() == ["2", "3"]
    assert _cli(capsys, "rollback", "tickets")[0] == 0
    assert _alias("production") == "2" and _history() == ["2"]
    rc, _, err = _cli(capsys, "rollback", "tickets")
    assert rc == 1 and "no earlier production version" in err
    assert _alias("production") == "2"

    rc, out, _ = _cli(capsys, "models", "tickets", "--json")
    assert rc == 0
    (model,) = json.loads(out)
    by_version = {v["version"]: v for v in model["versions"]}
    assert [v for v, row in by_version.items() if "production" in row["aliases"]] == ["2"]
    assert by_version["3"]["aliases"] == ["staging"] and by_version["3"]["verdict"] == "pass"
    assert by_version["1"]["metrics"]["accuracy"] == 0.0 and by_version["2"]["metrics"]["accuracy"] == 1.0
    rc, out, _ = _cli(capsys, "models")
    assert rc == 0 and "v2" in out and "@production" in out


def test_rollback_revokes_the_version_it_leaves_and_promote_refuses_it(
    tiny_base, learned_rows, gate_run, capsys, monkeypatch
):
    import getpass
    import socket
    from datetime import UTC, datetime

    from ftops import adapter as fa

    strong = log_adapter_run(tiny_base, learned_rows, **LEARNED_ADAPTER)
    assert [gate_run(strong) for _ in range(3)] == ["1", "2", "3"]
    for v in ("1", "2", "3"):
        assert _cli(capsys, "promote", "tickets", "--to", "production", "--version", v)[0] == 0
    assert _history() == ["1", "2", "3"]

    monkeypatch.setenv("FTOPS_ACTOR", "oncall-bot")
    rc, out, _ = _cli(capsys, "rollback", "tickets", "--reason", "answers in French", "--json")
    assert rc == 0, out
    move = json.loads(out)
    assert move["version"] == "2" and move["previous"] == "3"
    at = datetime.fromisoformat(move["revoked"].pop("at"))
    assert at.tzinfo is not None and abs((datetime.now(UTC) - at).total_seconds()) < 3600
    assert move["revoked"] == {"version": "3", "reason": "answers in French", "by": "oncall-bot"}
    tags = _client().get_model_version("tickets", "3").tags
    assert tags[fa.TAG_REVOKED] == "true" and tags[fa.TAG_REVOKED_BY] == "oncall-bot"
    assert tags[fa.TAG_REVOKED_REASON] == "answers in French" and tags[fa.TAG_REVOKED_AT] == at.isoformat()
    assert fa.revocation(tags) == "answers in French"

    monkeypatch.delenv("FTOPS_ACTOR")
    rc, out, _ = _cli(capsys, "rollback", "tickets")
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    assert rc == 0 and "version 2 -> 1" in out and f"version 2 revoked (rolled back from production by {who})" in out
    tags = _client().get_model_version("tickets", "2").tags
    assert tags[fa.TAG_REVOKED_BY] == who and fa.revocation(tags) == f"rolled back from production by {who}"
    assert fa.revocation(_client().get_model_version("tickets", "1").tags) is None
    assert fa.revocation({}) is None and fa.revocation({fa.TAG_REVOKED: "false"}) is None

    # a revoked version is never promoted again, named or at @staging
    for argv in (("--version", "3"), ()):
        rc, _, err = _cli(capsys, "promote", "tickets", "--to", "production", *argv)
        assert rc == 1 and "version 3 is revoked (answers in French; by oncall-bot" in err
        assert len(err.strip().splitlines()) == 1
    assert _alias("production") == "1" and _history() == ["1"]

    rc, out, _ = _cli(capsys, "models", "tickets", "--json")
    by_version = {v["version"]: v for v in json.loads(out)[0]["versions"]}
    assert by_version["3"]["revoked"] == {"reason": "answers in French", "by": "oncall-bot", "at": at.isoformat()}
    assert by_version["2"]["revoked"]["by"] == who and by_version["1"]["revoked"] is None
    rc, out, _ = _cli(capsys, "models", "tickets")
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  v")}
    assert "REVOKED by oncall-bot" in lines["v3"] and "answers in French" in lines["v3"]
    assert "REVOKED" in lines["v2"] and "REVOKED" not in lines["v1"]

    # rollback never returns production to a revoked version: a move in the MLflow UI to 3, then rollback -> 1;
    # with 1 revoked by hand, rollback from 2 is refused and production stays
    _client().set_registered_model_alias("tickets", "production", "3")
    assert _cli(capsys, "rollback", "tickets")[0] == 0 and _alias("production") == "1"
    _client().set_registered_model_alias("tickets", "production", "2")
    _client().set_model_version_tag("tickets", "1", fa.TAG_REVOKED, "true")
    rc, _, err = _cli(capsys, "rollback", "tickets")
    assert rc == 1 and "previous production version 1 is revoked" in err
    assert _alias("production") == "2"


def test_two_promotions_at_once_leave_one_production_and_an_exact_history(tiny_base, learned_rows, gate_run):
    strong = log_adapter_run(tiny_base, learned_rows, **LEARNED_ADAPTER)
    assert [gate_run(strong) for _ in range(3)] == ["1", "2", "3"]
    from ftops.registry.lifecycle import promote

    promote("tickets", version="1")
    from ftops.registry.lock import registry_lock

    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    with registry_lock():  # both start, both block on the lock; released at once, they contend for real
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ftops.cli",
                    "promote",
                    "tickets",
                    "--to",
                    "production",
                    "--version",
                    v,
                    "--json",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for v in ("2", "3")
        ]
        for p in procs:
            assert "waiting for the registry lock" in p.stderr.readline()
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    moves = [json.loads(out) for out, _ in results]
    history = _history()
    assert history[0] == "1" and sorted(history[1:]) == ["2", "3"]  # neither promotion lost the other's entry
    assert _alias("production") == history[-1]
    # the second to take the lock saw the first's version as the previous production
    first, second = sorted(moves, key=lambda m: len(m["history"]))
    assert first["previous"] == "1" and second["previous"] == first["version"]
    from ftops.registry.lifecycle import list_models, rollback

    (model,) = list_models("tickets")
    assert sum("production" in v["aliases"] for v in model["versions"]) == 1
    assert rollback("tickets").version == history[-2]


def test_lifecycle_errors_are_one_line(fast_ftops_home, capsys):
    rc, _, err = _cli(capsys, "promote", "nope", "--to", "production")
    assert rc == 1 and "no registered model 'nope'" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _cli(capsys, "rollback", "nope")
    assert rc == 1 and "no registered model" in err
    rc, _, err = _cli(capsys, "models", "../x")
    assert rc == 2 and "invalid registered model name" in err
    _client().create_registered_model("empty")
    rc, _, err = _cli(capsys, "promote", "empty", "--to", "production")
    assert rc == 1 and "no version at 'staging'" in err
    with pytest.raises(SystemExit) as e:
        main(["promote", "empty", "--to", "staging"])
    assert e.value.code == 2
    rc, out, _ = _cli(capsys, "models", "--json")
    assert rc == 0 and [m["name"] for m in json.loads(out)] == ["empty"]
