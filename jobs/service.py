"""The fine-tuning API as one piece the top can mount: its typed settings, its store, its app and its executor.

``jobs:`` in the serving config (``ftops serve --config FILE``) holds :class:`JobsConfig`; the top
(``ftops.cli.service``) builds the pieces with :func:`build` and mounts them beside inference. On a cluster the API
may also run alone, with no GPU (``ftops jobs serve``, :func:`serve_alone`: k8s/base/jobs-api.yaml), its jobs made
as Kubernetes Jobs (``executor: kubernetes``, jobs/k8s_executor.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import uvicorn
import yaml
from pydantic import Field, model_validator

import ftops.training
from ftops.api_keys import ApiKeyMiddleware, load_keys
from ftops.base import list_bases
from ftops.config import StrictConfig, read_yaml, validate
from ftops.env import FTOPS_ADMIN_KEY, FTOPS_API_KEY
from ftops.errors import UsageError
from ftops.http import send_json
from ftops.jobs.api import JobsApiSettings, build_app
from ftops.jobs.k8s_executor import KubernetesExecutor, KubernetesSettings
from ftops.jobs.runner import LocalExecutor, RunnerSettings
from ftops.jobs.store import JobStore
from ftops.registry.policy import POLICIES_DIR

#: the training config every API job starts from (shipped with the training stage)
DEFAULT_TRAIN_CONFIG = Path(ftops.training.__file__).resolve().parent / "templates" / "api_job.yaml"
#: the registry's default policy
DEFAULT_POLICY = POLICIES_DIR / "default.yaml"


class KubernetesJobsConfig(StrictConfig):
    """``jobs.kubernetes``: one ``batch/v1`` Job per fine-tuning job (jobs/k8s_executor.py)."""

    job_template: Path
    """The Job template every job's Job is rendered from (``k8s/base/jobs-api/train-job-template.yaml``; in the
    cluster the ConfigMap ``ftops-jobs`` mounts it)."""
    namespace: str = Field("ftops", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    """Namespace the Jobs are made in (the jobs API's Role allows Jobs there only)."""
    max_running: int = Field(1, ge=1, le=1000)
    """Jobs running at once; 1 fits the ReadWriteOnce checkpoint volume of ``k8s/base``."""


class JobsConfig(StrictConfig):
    """The fine-tuning API (``/v1/files``, ``/v1/fine_tuning/jobs``) of ``ftops serve``."""

    enabled: bool = True
    """Serve the fine-tuning API beside inference."""
    executor: Literal["local", "kubernetes"] = "local"
    """Where jobs run: ``local``, a worker in the service's host that runs one job at a time as child processes;
    ``kubernetes``, one Kubernetes Job per fine-tuning job (``jobs.kubernetes``)."""
    kubernetes: KubernetesJobsConfig | None = None
    """The Kubernetes executor's settings; required with ``executor: kubernetes``."""
    hardware: str | None = None
    """Hardware profile the jobs train on, an instance of costs/hardware.yaml (e.g. ``aws-g6.xlarge``): tagged on
    each job's run, ``ftops cost report`` prices the job's wall time at its hourly price. None: the report's
    hardware profile."""
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

    @model_validator(mode="after")
    def _kubernetes_settings(self) -> JobsConfig:
        if self.executor == "kubernetes" and self.kubernetes is None:
            raise ValueError("executor 'kubernetes' needs jobs.kubernetes.job_template (k8s/base/jobs-api/)")
        return self


@dataclass
class JobsService:
    """What the top mounts: ``app`` under ``/v1/files`` and ``/v1/fine_tuning``, with ``start``/``stop``."""

    app: object
    start: object
    stop: object
    busy: object = None
    """The local executor's ``busy()`` (a job trains on this host); None when jobs run elsewhere (Kubernetes)."""


def load_jobs_config(raw: dict | None, where: str = "serving config: jobs") -> JobsConfig:
    """The checked ``jobs:`` settings (one error naming the field)."""
    return validate(JobsConfig, raw or {}, where, error=UsageError)


def load_jobs_config_file(path: Path) -> JobsConfig:
    """A YAML file holding the ``jobs:`` mapping (the ConfigMap ``ftops-jobs`` on a cluster)."""
    return load_jobs_config(read_yaml(path, "jobs config", error=UsageError), str(path))


def runner_settings(config: JobsConfig) -> RunnerSettings:
    """What both executors (and a job's pod) run each job with."""
    for path in (config.train_config, config.policy):
        if not Path(path).is_file():
            raise UsageError(f"jobs: {path}: no such file")
    template = yaml.safe_load(Path(config.train_config).read_text()) or {}
    return RunnerSettings(
        train_config=config.train_config,
        policy=config.policy,
        learning_rate=float(template.get("learning_rate", 2e-4)),
        poll_s=config.poll_s,
        gate_options=list(config.gate_options),
        hardware=config.hardware,
    )


def build(raw: dict) -> JobsService | None:
    """The fine-tuning API from the serving config's ``jobs:`` mapping; None when it is disabled."""
    return build_service(load_jobs_config(raw))


def build_service(config: JobsConfig) -> JobsService | None:
    """The fine-tuning API's store, app and executor from checked settings; None when it is disabled."""
    if not config.enabled:
        return None
    runner = runner_settings(config)
    store = JobStore(config.url, config.files_dir)
    app = build_app(
        store,
        JobsApiSettings(max_upload_bytes=config.max_upload_bytes, bases=tuple(config.bases)),
        lambda: [b.name for b in list_bases()],
    )
    if config.executor == "kubernetes":
        k8s = config.kubernetes
        executor = KubernetesExecutor(
            store, runner, KubernetesSettings(k8s.job_template, k8s.namespace, k8s.max_running)
        )
    else:
        executor = LocalExecutor(store, runner)
        return JobsService(app=app, start=executor.start, stop=executor.stop, busy=executor.busy)
    return JobsService(app=app, start=executor.start, stop=executor.stop)


# --------------------------------------------------------------------------------------------- served alone
HEALTH_PATHS = frozenset({"/livez", "/readyz"})


def serve_alone(config: JobsConfig, host: str, port: int, keys_file: Path | None = None) -> None:
    """The fine-tuning API without inference, e.g. as its own Deployment behind the same host as ``ftops serve``
    (an Ingress routes ``/v1/files`` and ``/v1/fine_tuning`` here): the app and its executor, behind API keys."""
    keys = load_keys(keys_file)
    if not keys:
        raise UsageError(f"no API key: set {FTOPS_API_KEY.name} (and {FTOPS_ADMIN_KEY.name}), or pass --keys-file")
    service = build_service(config)
    if service is None:
        raise UsageError("jobs: enabled is false; nothing to serve")
    # the same keys and ids as ``ftops serve``, so a client sees the same files and jobs behind either
    keyed = ApiKeyMiddleware(service.app, keys=lambda: keys, open_paths=frozenset())

    async def app(scope, receive, send) -> None:  # the executor starts and stops with the server's lifespan
        if scope["type"] == "http" and scope["path"] in HEALTH_PATHS:  # up once the executor has started
            return await send_json(send, {"status": "ok"})
        if scope["type"] != "lifespan":
            return await keyed(scope, receive, send)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                service.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                service.stop()  # a running local child is killed; its job resumes at the next start
                await send({"type": "lifespan.shutdown.complete"})
                return

    uvicorn.run(app, host=host, port=port, log_level="info")  # SIGTERM: shut down, then exit by that signal
