"""Promotion from several machines: a real ``mlflow server`` process and ``ftops promote`` processes that share
nothing but the server (each its own ``FTOPS_HOME``, so no common lock file), promoting at once, round after round.

Two set-ups, one per lock of ``registry/lock.py`` that holds across machines: the server on SQLite with the lock kept
in the registry itself (a registered model created atomically), and the server on a throwaway PostgreSQL with
``FTOPS_REGISTRY_LOCK_URL`` naming that database (``pg_advisory_lock``). Each round both processes wait on the lock,
which the test holds, and go at the same moment when it lets go: one of them wins the round (it sees the round's
production as previous), the other promotes after it (it sees the winner as previous), and the production history
keeps both entries in that order.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import LEARNED_ADAPTER, log_adapter_run, start_mlflow_server, stop_mlflow_server
from test_cost_postgres import pg_url  # noqa: F401  (the throwaway PostgreSQL cluster fixture)
from test_registry import LENIENT

MODEL = "tickets"
ROUNDS = (("2", "3"), ("4", "5"), ("6", "7"))


@pytest.fixture(params=["registry-lock", "postgres-advisory-lock"])
def mlflow_server(request, tmp_path, ftops_home, monkeypatch):
    """A real ``mlflow server`` (SQLite store, or PostgreSQL with FTOPS_REGISTRY_LOCK_URL set); yields its URL, with
    ``MLFLOW_TRACKING_URI`` pointing at it."""
    if request.param == "postgres-advisory-lock":
        # psycopg2 named: SQLAlchemy 2.1 (MLflow's store) would otherwise look for psycopg 3, not installed
        backend = request.getfixturevalue("pg_url").replace("postgresql://", "postgresql+psycopg2://", 1)
        monkeypatch.setenv("FTOPS_REGISTRY_LOCK_URL", request.getfixturevalue("pg_url"))  # as a user writes it
    else:
        backend = f"sqlite:///{tmp_path / 'server.db'}"
        monkeypatch.delenv("FTOPS_REGISTRY_LOCK_URL", raising=False)
    url, server = start_mlflow_server(backend, tmp_path, workers=2)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        yield url
    finally:
        stop_mlflow_server(server)


def _client():
    import mlflow

    from ftops import settings

    settings.configure_mlflow()
    return mlflow.MlflowClient()


def _versions(tiny_base, learned_rows, tmp_path, n: int) -> None:
    """Versions 1..n of MODEL: one real gate run, then copies of its version (same run, source and tags)."""
    from ftops.registry.eval_config import EvalConfig
    from ftops.registry.gate import gate

    policy = tmp_path / "lenient.yaml"
    policy.write_text(LENIENT)
    run_id = log_adapter_run(tiny_base, learned_rows, **LEARNED_ADAPTER)
    report = gate(run_id, policy, MODEL, EvalConfig(engine="transformers", max_new_tokens=8, regression=False))
    assert report.verdict == "pass" and report.version == "1", report.markdown()
    client = _client()
    first = client.get_model_version(MODEL, "1")
    for _ in range(n - 1):
        client.create_model_version(MODEL, source=first.source, run_id=first.run_id, tags=dict(first.tags))


def _promote_process(version: str, home: Path) -> subprocess.Popen:
    env = {**os.environ, "FTOPS_HOME": str(home), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    argv = [sys.executable, "-m", "ftops.cli", "promote", MODEL, "--to", "production", "--version", version, "--json"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_until_waiting(proc: subprocess.Popen) -> str:
    """Read the process's stderr until it says it waits for the registry lock; returns what it printed."""
    seen = []
    while line := proc.stderr.readline():
        seen.append(line)
        if "waiting for the registry lock" in line:
            return "".join(seen)
    pytest.fail(f"the promotion never waited for the registry lock (exit {proc.wait()}): {''.join(seen)}")


def test_concurrent_promotions_from_two_machines_one_winner_per_round(mlflow_server, tiny_base, learned_rows, tmp_path):
    import json

    from filelock import FileLock

    from ftops.registry.lifecycle import TAG_HISTORY, promote
    from ftops.registry.lock import registry_lock

    _versions(tiny_base, learned_rows, tmp_path, 1 + 2 * len(ROUNDS))
    promote(MODEL, version="1")
    client = _client()
    homes = [tmp_path / "machine-a", tmp_path / "machine-b"]
    for home in homes:
        home.mkdir()
    expected = ["1"]
    for a, b in ROUNDS:
        with ExitStack() as held:
            held.enter_context(registry_lock())
            # A lock that is only local (each machine's $FTOPS_HOME/registry.lock) would not make the processes wait
            # for the test's lock: hold those files too, so that with such a lock both also start at the same moment
            # and the round is a real race rather than a missing wait.
            for home in homes:
                held.enter_context(FileLock(str(home / "registry.lock")))
            procs = [_promote_process(v, home) for v, home in zip((a, b), homes)]
            for p in procs:
                _wait_until_waiting(p)
        results = [p.communicate(timeout=600) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], results
        moves = {m["version"]: m for m in (json.loads(out) for out, _ in results)}
        start = expected[-1]
        winners = [v for v, m in moves.items() if m["previous"] == start]
        assert len(winners) == 1, moves  # two processes that both saw the round's production: a lost update
        (winner,) = winners
        (second,) = {a, b} - {winner}
        assert moves[second]["previous"] == winner, moves
        expected += [winner, second]
        assert moves[second]["history"] == expected
        history = json.loads(client.get_registered_model(MODEL).tags[TAG_HISTORY])
        assert history == expected  # complete and in order: no entry lost
        assert client.get_registered_model(MODEL).aliases["production"] == second
    # released: no lock left behind in the registry
    assert [m.name for m in client.search_registered_models()] == [MODEL]
