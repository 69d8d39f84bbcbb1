"""Embedded MLflow defaults follow FTOPS_HOME; a user's MLFLOW_TRACKING_URI wins."""

from __future__ import annotations

import os

import mlflow

from ftops import settings


def test_embedded_store_follows_ftops_home_and_does_not_leak(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    for name in ("a", "b"):
        monkeypatch.setenv("FTOPS_HOME", str(tmp_path / name))
        uri = settings.configure_mlflow()
        assert uri == f"sqlite:///{tmp_path / name / 'mlflow.db'}"
        assert mlflow.get_tracking_uri() == uri and mlflow.get_registry_uri() == uri
        # a child process computes the store from its own FTOPS_HOME, not from a URI MLflow exported
        assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
        exp = mlflow.MlflowClient().get_experiment(settings.experiment_id())
        assert exp.artifact_location == (tmp_path / name / "artifacts").as_uri()


def test_user_tracking_uri_wins(tmp_path, monkeypatch):
    server = f"sqlite:///{tmp_path / 'server.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.setenv("FTOPS_HOME", str(tmp_path / "home"))
    assert settings.configure_mlflow() == server
    assert os.environ["MLFLOW_TRACKING_URI"] == server
    assert not settings.is_embedded()
    assert not (tmp_path / "home").exists()


def test_every_database_is_its_setting_then_its_variable_then_a_file_under_ftops_home(tmp_path, monkeypatch):
    """The ledger and the jobs store find their database the same way: the config field or flag, else
    ``FTOPS_LEDGER_URL`` / ``FTOPS_JOBS_URL``, else SQLite under ``FTOPS_HOME``; one variable never moves the other."""
    from ftops.jobs.store import default_url as jobs_url
    from ftops.serving.ledger import Ledger

    monkeypatch.setenv("FTOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FTOPS_LEDGER_URL", raising=False)
    monkeypatch.delenv("FTOPS_JOBS_URL", raising=False)
    assert jobs_url() == f"sqlite:///{tmp_path / 'home' / 'jobs.db'}"
    elsewhere = f"sqlite:///{tmp_path / 'team' / 'ledger.db'}"
    (tmp_path / "team").mkdir()
    monkeypatch.setenv("FTOPS_LEDGER_URL", elsewhere)
    ledger = Ledger()
    try:
        assert ledger.url == elsewhere and (tmp_path / "team" / "ledger.db").is_file()
    finally:
        ledger.close()
    assert not (tmp_path / "home" / "ledger.db").exists()
    assert jobs_url() == f"sqlite:///{tmp_path / 'home' / 'jobs.db'}"
    explicit = f"sqlite:///{tmp_path / 'explicit.db'}"
    ledger = Ledger(explicit)
    try:
        assert ledger.url == explicit
    finally:
        ledger.close()
