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
