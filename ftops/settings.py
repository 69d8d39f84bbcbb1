"""Where ftops keeps its state, and how it reaches MLflow.

Embedded defaults need no server: MLflow tracking and registry in SQLite at ``.ftops/mlflow.db`` and artifacts
under ``.ftops/artifacts/``, both below the working directory. ``FTOPS_HOME`` moves that folder;
``MLFLOW_TRACKING_URI`` (and MLflow's other usual variables) point the same code at a real MLflow server.
"""

from __future__ import annotations

import os
from pathlib import Path

EXPERIMENT_NAME = "ftops"

#: URIs that configure_mlflow set: MLflow copies them into os.environ (for subprocesses), where they must not be
#: mistaken for the user's own MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI once FTOPS_HOME changes.
_SET_BY_FTOPS: dict[str, str] = {}


def _user_env(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value is not None and _SET_BY_FTOPS.get(name) == value else value


def home() -> Path:
    """The state folder: ``$FTOPS_HOME`` or ``./.ftops``."""
    return Path(os.environ.get("FTOPS_HOME", ".ftops")).resolve()


def models_dir() -> Path:
    """Imported base models: ``$FTOPS_MODELS`` or ``<home>/models``."""
    env = os.environ.get("FTOPS_MODELS")
    return Path(env).resolve() if env else home() / "models"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the embedded SQLite store."""
    return _user_env("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def artifact_root() -> str:
    """Where new experiments put artifacts when the store is the embedded one."""
    return (home() / "artifacts").as_uri()


def is_embedded() -> bool:
    return _user_env("MLFLOW_TRACKING_URI") is None


def configure_mlflow() -> str:
    """Point MLflow's fluent API and clients at the configured store; returns the tracking URI.

    Idempotent. With the embedded store, creates ``<home>`` and the ``ftops`` experiment with its artifacts under
    ``<home>/artifacts`` (MLflow would otherwise put them in ``./mlruns``).
    """
    import logging

    import mlflow

    # Alembic's migration chatter on every new SQLite store says nothing a user can act on.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri()
    embedded = is_embedded()
    if embedded:
        home().mkdir(parents=True, exist_ok=True)
    registry = _user_env("MLFLOW_REGISTRY_URI") or uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry)
    if embedded:
        _SET_BY_FTOPS["MLFLOW_TRACKING_URI"] = uri
    if registry == uri:
        _SET_BY_FTOPS["MLFLOW_REGISTRY_URI"] = registry
    return uri


def experiment_id() -> str:
    """The id of the ``ftops`` experiment (``$MLFLOW_EXPERIMENT_NAME`` overrides the name), created on first use."""
    import mlflow

    configure_mlflow()
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT_NAME)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifact_root() if is_embedded() else None
    return client.create_experiment(name, artifact_location=location)
