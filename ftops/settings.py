"""Where ftops keeps its state, and how it reaches MLflow.

Embedded defaults need no server: MLflow tracking and registry in SQLite at ``.ftops/mlflow.db`` and artifacts
under ``.ftops/artifacts/``, both below the working directory. ``FTOPS_HOME`` moves that folder;
``MLFLOW_TRACKING_URI`` (and MLflow's other usual variables) point the same code at a real MLflow server.
"""

from __future__ import annotations

import os
from pathlib import Path

from ftops.env import FTOPS_HOME, FTOPS_MODELS, EnvVar

EXPERIMENT_NAME = "ftops"


def home() -> Path:
    """The state folder: ``$FTOPS_HOME`` or ``./.ftops``."""
    return Path(FTOPS_HOME.get()).resolve()


def models_dir() -> Path:
    """Imported base models: ``$FTOPS_MODELS`` or ``<home>/models``."""
    env = FTOPS_MODELS.get()
    return Path(env).resolve() if env else home() / "models"


def database_url(variable: EnvVar, filename: str) -> str:
    """The database a store of ftops's uses when its config or command names none (the ledger, the jobs store):
    ``$variable`` (``FTOPS_LEDGER_URL``, ``FTOPS_JOBS_URL``), else SQLite at ``<home>/filename``. One order for every
    database: the config field or flag, then the variable, then the embedded file."""
    return variable.get() or f"sqlite:///{home() / filename}"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the embedded SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def artifact_root() -> str:
    """Where new experiments put artifacts when the store is the embedded one."""
    return (home() / "artifacts").as_uri()


def is_embedded() -> bool:
    return os.environ.get("MLFLOW_TRACKING_URI") is None


def configure_mlflow() -> str:
    """Point MLflow's fluent API and clients at the configured store; returns the tracking URI.

    Idempotent. With the embedded store, creates ``<home>`` and the ``ftops`` experiment with its artifacts under
    ``<home>/artifacts`` (MLflow would otherwise put them in ``./mlruns``).
    """
    import logging

    import mlflow

    # Alembic's migration chatter on every new SQLite store says nothing a user can act on; nor does MLflow's
    # "Creating initial MLflow database tables".
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    uri = tracking_uri()
    embedded = is_embedded()
    if embedded:
        home().mkdir(parents=True, exist_ok=True)
    user_registry = os.environ.get("MLFLOW_REGISTRY_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(user_registry or uri)
    # MLflow exports the URIs it is given to os.environ for subprocesses. The embedded store follows FTOPS_HOME
    # instead: a child with another FTOPS_HOME must not inherit this store, nor take it for a user's server.
    if embedded:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    if user_registry is None:
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
    return uri


def mlflow_client():
    """An ``mlflow.MlflowClient`` on the configured tracking and registry stores (:func:`configure_mlflow` first)."""
    import mlflow

    configure_mlflow()
    return mlflow.MlflowClient()


def experiment_id() -> str:
    """The id of the ``ftops`` experiment (``$MLFLOW_EXPERIMENT_NAME`` overrides the name), created on first use."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT_NAME)
    client = mlflow_client()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifact_root() if is_embedded() else None
    return client.create_experiment(name, artifact_location=location)
