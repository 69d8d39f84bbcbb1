"""The fine-tuning API as one piece the top can mount: its typed settings, its store, its app and its executor.

``jobs:`` in the serving config (``ftops serve --config FILE``) holds :class:`JobsConfig`; the top
(``ftops.cli.service``) builds the pieces with :func:`build` and mounts them beside inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from ftops.config import StrictConfig, validate
from ftops.errors import UsageError

STAGE_ROOT = Path(__file__).resolve().parent
DEFAULT_TRAIN_CONFIG = STAGE_ROOT / "templates" / "api_job.yaml"
#: the registry's default policy, found beside this stage both in the checkout and in the installed package
DEFAULT_POLICY = STAGE_ROOT.parent / "registry" / "policies" / "default.yaml"


class JobsConfig(StrictConfig):
    """The fine-tuning API (``/v1/files``, ``/v1/fine_tuning/jobs``) of ``ftops serve``."""

    enabled: bool = True
    """Serve the fine-tuning API beside inference."""
    executor: Literal["local"] = "local"
    """Where jobs run: ``local``, a worker in the service's host that runs one job at a time as child processes."""
    train_config: Path = DEFAULT_TRAIN_CONFIG
    """Training YAML every job starts from; the request's model, files and hyperparameters are laid over it."""
    policy: Path = DEFAULT_POLICY
    """Gate policy a finished job is judged by; a pass registers the version at ``staging``."""
    url: str | None = None
    """Database of files and jobs (SQLAlchemy URL); none: ``$FTOPS_JOBS_URL`` or SQLite under ``$FTOPS_HOME``."""
    files_dir: Path | None = None
    """Folder of uploaded bytes; none: ``$FTOPS_FILES_DIR`` or ``$FTOPS_HOME/files``."""
    max_upload_bytes: int = Field(100_000_000, ge=1024)
    """Largest upload; more answers 413."""
    bases: list[str] = Field(default_factory=list)
    """Base models a job may fine-tune; empty: every imported base (``ftops base list``)."""
    gate_options: list[str] = Field(default_factory=list)
    """More ``ftops gate`` options for every job, e.g. ``[--max-new-tokens, "64"]`` or ``[--schema, ticket]``."""
    poll_s: float = Field(1.0, gt=0, le=60)
    """How often the worker looks at the queue, its child process and MLflow."""


@dataclass
class JobsService:
    """What the top mounts: ``app`` under ``/v1/files`` and ``/v1/fine_tuning``, with ``start``/``stop``."""

    app: object
    start: object
    stop: object


def build(raw: dict) -> JobsService | None:
    """The fine-tuning API from the serving config's ``jobs:`` mapping; None when it is disabled."""
    import yaml

    from ftops.base import list_bases
    from ftops.training.job_runner import LocalExecutor, RunnerSettings
    from ftops.training.job_store import JobStore
    from ftops.training.jobs_api import JobsApiSettings, build_app

    config: JobsConfig = validate(JobsConfig, raw or {}, "serving config: jobs", error=UsageError)
    if not config.enabled:
        return None
    for path in (config.train_config, config.policy):
        if not Path(path).is_file():
            raise UsageError(f"serving config: jobs: {path}: no such file")
    template = yaml.safe_load(Path(config.train_config).read_text()) or {}
    store = JobStore(config.url, config.files_dir)
    app = build_app(
        store,
        JobsApiSettings(max_upload_bytes=config.max_upload_bytes, bases=tuple(config.bases)),
        lambda: [b.name for b in list_bases()],
    )
    executor = LocalExecutor(
        store,
        RunnerSettings(
            train_config=config.train_config,
            policy=config.policy,
            learning_rate=float(template.get("learning_rate", 2e-4)),
            poll_s=config.poll_s,
            gate_options=list(config.gate_options),
        ),
    )
    return JobsService(app=app, start=executor.start, stop=executor.stop)
