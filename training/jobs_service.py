"""The fine-tuning API as one piece the top can mount: its typed settings, its store, its app and its executor.

``jobs:`` in the serving config (``ftops serve --config FILE``) holds :class:`JobsConfig`; the top
(``ftops.cli.service``) builds the pieces with :func:`build` and mounts them beside inference. On a cluster the API
may also run alone, with no GPU (``ftops jobs serve``, :func:`serve_alone`: k8s/base/jobs-api.yaml), its jobs made
as Kubernetes Jobs (``executor: kubernetes``, training/k8s_executor.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from ftops.config import StrictConfig, read_yaml, validate
from ftops.errors import UsageError

if TYPE_CHECKING:
    from ftops.training.job_runner import RunnerSettings

STAGE_ROOT = Path(__file__).resolve().parent
DEFAULT_TRAIN_CONFIG = STAGE_ROOT / "templates" / "api_job.yaml"
#: the registry's default policy, found beside this stage both in the checkout and in the installed package
DEFAULT_POLICY = STAGE_ROOT.parent / "registry" / "policies" / "default.yaml"


class KubernetesJobsConfig(StrictConfig):
    """``jobs.kubernetes``: one ``batch/v1`` Job per fine-tuning job (training/k8s_executor.py)."""

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
    """Hardware profile the jobs train on, an instance of serving/hardware.yaml (e.g. ``aws-g6.xlarge``): tagged on
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
    import yaml

    from ftops.training.job_runner import RunnerSettings

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
    from ftops.base import list_bases
    from ftops.training.job_store import JobStore
    from ftops.training.jobs_api import JobsApiSettings, build_app

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
        from ftops.training.k8s_executor import KubernetesExecutor, KubernetesSettings

        k8s = config.kubernetes
        executor = KubernetesExecutor(
            store, runner, KubernetesSettings(k8s.job_template, k8s.namespace, k8s.max_running)
        )
    else:
        from ftops.training.job_runner import LocalExecutor

        executor = LocalExecutor(store, runner)
        return JobsService(app=app, start=executor.start, stop=executor.stop, busy=executor.busy)
    return JobsService(app=app, start=executor.start, stop=executor.stop)


# --------------------------------------------------------------------------------------------- served alone
class ApiKeys:
    """ASGI middleware: ``Authorization: Bearer KEY`` on every route but ``/livez`` and ``/readyz``, compared in
    constant time against each key; the matching key's id is what the jobs API files a job under. The same keys and
    ids as ``ftops serve`` (``FTOPS_API_KEY`` is ``default``, ``FTOPS_ADMIN_KEY`` is ``admin``, a keys file adds
    more), so a client sees the same files and jobs behind either; both check keys with :mod:`ftops.api_keys`."""

    def __init__(self, app, keys: dict[str, str]) -> None:
        self.app, self.keys = app, keys

    async def __call__(self, scope, receive, send) -> None:
        from ftops.api_keys import bearer, match_key

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] in ("/livez", "/readyz"):  # up once the executor has started (before uvicorn listens)
            return await _send_json(send, 200, {"status": "ok"})
        presented = bearer(scope)
        found = match_key(presented, self.keys)
        if found is None:
            message = "Incorrect API key provided." if presented else "You didn't provide an API key."
            body = {
                "error": {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
            }
            return await _send_json(send, 401, body)
        scope.setdefault("state", {})["ftops_key_id"] = found
        return await self.app(scope, receive, send)


async def _send_json(send, status: int, body: dict) -> None:
    import json

    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def api_keys(keys_file: Path | None = None) -> dict[str, str]:
    """``{key id: key}`` from ``$FTOPS_API_KEY`` (``default``), ``$FTOPS_ADMIN_KEY`` (``admin``) and a YAML mapping
    of key id -> key; every key at least 16 characters."""
    import os

    keys = {}
    if keys_file is not None:
        data = read_yaml(keys_file, "API keys", error=UsageError)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise UsageError(f"{keys_file}: expected a YAML mapping of key id -> key (strings)")
        keys.update(data)
    if os.environ.get("FTOPS_API_KEY"):
        keys["default"] = os.environ["FTOPS_API_KEY"]
    if os.environ.get("FTOPS_ADMIN_KEY"):
        keys["admin"] = os.environ["FTOPS_ADMIN_KEY"]
    short = sorted(k for k, v in keys.items() if len(v) < 16)
    if short:
        raise UsageError(f"API keys {', '.join(short)} are shorter than 16 characters; use random keys")
    if not keys:
        raise UsageError("no API key: set FTOPS_API_KEY (and FTOPS_ADMIN_KEY), or pass --keys-file")
    return keys


def serve_alone(config: JobsConfig, host: str, port: int, keys_file: Path | None = None) -> None:
    """The fine-tuning API without inference, e.g. as its own Deployment behind the same host as ``ftops serve``
    (an Ingress routes ``/v1/files`` and ``/v1/fine_tuning`` here): the app and its executor, behind API keys."""
    import uvicorn

    keys = api_keys(keys_file)
    service = build_service(config)
    if service is None:
        raise UsageError("jobs: enabled is false; nothing to serve")
    keyed = ApiKeys(service.app, keys)

    async def app(scope, receive, send) -> None:  # the executor starts and stops with the server's lifespan
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
