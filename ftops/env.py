"""Every ``FTOPS_*`` environment variable, declared once: its name, its default and what it does.

As MLflow's ``mlflow/environment_variables.py`` does: a module reads ``FTOPS_HOME.get()``, never
``os.environ["FTOPS_HOME"]``, so the name, the default and the documentation live here and nowhere else
(``tests/test_env.py`` fails on a ``"FTOPS_..."`` literal anywhere else in the library). A child process's
environment is built with ``{FTOPS_HOME.name: value}``.

An empty value counts as unset, as the shell's ``${VAR:-default}`` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class EnvVar:
    """One environment variable: ``get()`` is its value, or ``default`` when it is unset or empty."""

    name: str
    doc: str
    default: str | None = None

    def get(self) -> str | None:
        return os.environ.get(self.name) or self.default

    def is_set(self) -> bool:
        return bool(os.environ.get(self.name))


# ------------------------------------------------------------------------------------------------ state
FTOPS_HOME = EnvVar("FTOPS_HOME", "The state folder: MLflow's SQLite store, artifacts, models, ledger.", ".ftops")
FTOPS_MODELS = EnvVar("FTOPS_MODELS", "Imported base models; default <FTOPS_HOME>/models.")

# ------------------------------------------------------------------------------------------------ keys
FTOPS_API_KEY = EnvVar("FTOPS_API_KEY", "The API key with id 'default' (ftops serve, ftops jobs serve).")
FTOPS_ADMIN_KEY = EnvVar("FTOPS_ADMIN_KEY", "The admin key (id 'admin'): every route, /v1/usage only with it.")

# ------------------------------------------------------------------------------------------------ serving
FTOPS_SERVE_CONFIG = EnvVar("FTOPS_SERVE_CONFIG", "The serving config (YAML) a BentoML worker loads.")
FTOPS_REPLICA = EnvVar("FTOPS_REPLICA", "This server's replica id in the ledger (its host or pod); default hostname.")

FTOPS_LEDGER_URL = EnvVar(
    "FTOPS_LEDGER_URL", "The cost ledger's database (SQLAlchemy URL) when no ledger_url or --ledger names one."
)

# ------------------------------------------------------------------------------------------------ costs
FTOPS_PRICES = EnvVar("FTOPS_PRICES", "The hosted price table (YAML); default costs/prices.yaml.")
FTOPS_HARDWARE = EnvVar("FTOPS_HARDWARE", "The hardware price table (YAML); default costs/hardware.yaml.")
FTOPS_HARDWARE_PROFILE = EnvVar("FTOPS_HARDWARE_PROFILE", "The hardware profile this replica is priced at.")

# ------------------------------------------------------------------------------------------------ registry
FTOPS_ACTOR = EnvVar("FTOPS_ACTOR", "Who acts on the registry (rollback, revoke, lock holder); default user@host.")
FTOPS_REGISTRY_LOCK_URL = EnvVar("FTOPS_REGISTRY_LOCK_URL", "PostgreSQL URL of the registry lock (advisory locks).")

# ------------------------------------------------------------------------------------------------ fine-tuning API
FTOPS_JOBS_URL = EnvVar("FTOPS_JOBS_URL", "Database of files and jobs (SQLAlchemy URL); default SQLite in FTOPS_HOME.")
FTOPS_FILES_DIR = EnvVar("FTOPS_FILES_DIR", "Folder of uploaded files' bytes; default <FTOPS_HOME>/files.")
FTOPS_JOB_ID = EnvVar("FTOPS_JOB_ID", "The fine-tuning job a Kubernetes training pod runs (ftops jobs run-one).")
FTOPS_TRAINING_FILE_SHA256 = EnvVar("FTOPS_TRAINING_FILE_SHA256", "sha256 of a pod's job's training file.")
FTOPS_VALIDATION_FILE_SHA256 = EnvVar("FTOPS_VALIDATION_FILE_SHA256", "sha256 of a pod's job's validation file.")

#: every variable above, by name
ALL = {v.name: v for v in globals().values() if isinstance(v, EnvVar)}
#: the variables that hold secrets: never printed, logged or put in an error
SECRETS = (FTOPS_API_KEY, FTOPS_ADMIN_KEY)
