"""The fine-tuning API's Kubernetes executor (``jobs.executor: kubernetes``): one ``batch/v1`` Job per fine-tuning job.

Where each step runs:

1. validate, here in the API's pod (CPU: the base's tokenizer from the models volume), with the local executor's
   own code, so a bad file ends ``failed`` without taking a GPU.
2. a queued job is claimed (a compare-and-set ``queued`` -> ``running`` on the shared job store, so several API
   replicas never start one job twice) and its Job is created from the template (``kubernetes.job_template``,
   ``k8s/base/jobs-api/train-job-template.yaml``): :func:`render_job` sets the Job's name ``ftops-<job id>``, its
   labels, and the pod's ``FTOPS_JOB_ID`` and the uploaded files' sha256. At most ``kubernetes.max_running`` Jobs
   run at once (1 by default: the checkpoint volume is ReadWriteOnce).
3. the pod runs ``ftops jobs run-one $(FTOPS_JOB_ID)``: the local executor's train and gate steps
   (:meth:`ftops.jobs.runner.LocalExecutor.run_in_pod`). It reads the uploaded bytes from the shared files
   location (``FTOPS_FILES_DIR``: a ReadWriteMany volume the API writes and the pod mounts read-only) and checks
   them against the sha256 the Job carries and the store's. Checkpoints go to ``FTOPS_HOME=/checkpoints/<job id>``
   on the checkpoint volume; a pod started again by the Job (node lost, eviction) resumes the job's run from its last
   complete checkpoint.

How status flows back (the choice): **the pod writes it**. It records events, metrics, checkpoints, trained tokens
and the outcome in the shared job store (PostgreSQL, ``FTOPS_JOBS_URL`` from a Secret), exactly as the local
executor does, so every status and event means the same with both executors. This executor maps only what a pod
cannot report: a Job whose ``Failed`` condition is set (``backoffLimit`` reached, a ``podFailurePolicy`` FailJob
rule, a deadline) ends the job ``failed`` with the Job's reason and message; a Job that vanished, or completed with
the job still ``running``, ends it ``failed`` too. Cancel deletes the Job (its pod gets SIGTERM at once; the pod's
own poll of the store also stops training) and marks the job ``cancelled``. The executor lists the Jobs it made
(label ``app.kubernetes.io/managed-by=ftops-jobs-api``) and then watches them from the list's resourceVersion, so a
Job's change wakes it at once; new queued jobs are picked up within ``poll_s``.

The official ``kubernetes`` client (extra ``kubernetes``) talks to the API server: in a pod with its ServiceAccount
(a Role allowing create/get/list/watch/delete on ``jobs.batch`` in its namespace: ``k8s/base/jobs-api.yaml``),
elsewhere with the current kubeconfig.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ftops.config import read_yaml
from ftops.env import FTOPS_HOME, FTOPS_JOB_ID, FTOPS_TRAINING_FILE_SHA256, FTOPS_VALIDATION_FILE_SHA256
from ftops.errors import UsageError
from ftops.jobs.runner import LocalExecutor, RunnerSettings
from ftops.jobs.store import JobStore
from ftops.redact import redact

log = logging.getLogger("ftops.jobs")

MANAGED_BY = "ftops-jobs-api"
SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
JOB_LABEL = "ftops.dev/job-id"
CONTAINER = "train"
#: env entries of the template's train container whose values render_job sets per job
FILE_ENV = {"training_file": FTOPS_TRAINING_FILE_SHA256.name, "validation_file": FTOPS_VALIDATION_FILE_SHA256.name}
JOB_ENV = (FTOPS_JOB_ID.name, *FILE_ENV.values())
#: API errors worth trying again later (the server is busy or restarting); any other refusal fails the job
RETRYABLE = {429, 500, 502, 503, 504}


@dataclass
class KubernetesSettings:
    """Where and how the Jobs are made (``jobs.kubernetes`` in the serving config)."""

    job_template: Path
    """The Job every fine-tuning job's Job is rendered from."""
    namespace: str = "ftops"
    """Namespace of the Jobs (the ServiceAccount's Role allows Jobs there only)."""
    max_running: int = 1
    """Jobs running at once."""


def job_name(job_id: str) -> str:
    """The Kubernetes Job of fine-tuning job ``ftjob-<hex>``: ``ftops-ftjob-<hex>`` (a DNS label, under 63)."""
    return f"ftops-{job_id}"


def _train_container(doc: dict) -> dict | None:
    containers = doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    return next((c for c in containers if c.get("name") == CONTAINER), None)


def load_template(path: Path) -> dict:
    """The Job template, checked for what :func:`render_job` relies on (every problem at once, naming the file)."""
    doc = read_yaml(path, "Kubernetes Job template", error=UsageError)
    problems = []
    if (doc.get("apiVersion"), doc.get("kind")) != ("batch/v1", "Job"):
        problems.append("it must be one batch/v1 Job")
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    if pod.get("restartPolicy") != "Never":
        problems.append("spec.template.spec.restartPolicy must be Never (the Job makes the next pod, which resumes)")
    container = _train_container(doc)
    if container is None:
        problems.append(f"no container named {CONTAINER!r}")
    else:
        env = {e.get("name"): e for e in container.get("env", [])}
        problems += [
            f"container {CONTAINER!r} has no env {name} (render_job sets it)" for name in JOB_ENV if name not in env
        ]
        if "$(FTOPS_JOB_ID)" not in (container.get("args") or []):
            problems.append(f"container {CONTAINER!r}'s args must pass $(FTOPS_JOB_ID) (ftops jobs run-one)")
        if "$(FTOPS_JOB_ID)" not in str(env.get(FTOPS_HOME.name, {}).get("value", "")):
            problems.append("env FTOPS_HOME must name $(FTOPS_JOB_ID): each job's checkpoints, found again on resume")
    if problems:
        raise UsageError(f"{path}: " + "; ".join(problems))
    return doc


def render_job(template: dict, job: dict, files: dict[str, dict], namespace: str) -> dict:
    """The Job for fine-tuning ``job`` (a job store row), whose uploaded files' rows are ``files`` (param -> row)."""
    doc = copy.deepcopy(template)
    labels = {JOB_LABEL: job["id"], "app.kubernetes.io/managed-by": MANAGED_BY}
    meta = doc.setdefault("metadata", {})
    meta.update(name=job_name(job["id"]), namespace=namespace)
    meta["labels"] = {**meta.get("labels", {}), **labels}
    meta["annotations"] = {
        **meta.get("annotations", {}),
        **{f"ftops.dev/{param.replace('_', '-')}": row["id"] for param, row in files.items()},
    }
    pod_meta = doc["spec"]["template"].setdefault("metadata", {})
    pod_meta["labels"] = {**pod_meta.get("labels", {}), **labels}
    values = {FTOPS_JOB_ID.name: job["id"], **{FILE_ENV[p]: row["sha256"] for p, row in files.items()}}
    container = _train_container(doc)
    for entry in container["env"]:
        if entry["name"] in JOB_ENV:
            entry["value"] = values.get(entry["name"], "")
    for pod_container in [*doc["spec"]["template"]["spec"].get("initContainers", []), container]:
        for kind in ("limits", "requests"):  # quantities are strings in the API's types (YAML has 1, "8", 32Gi)
            quantities = pod_container.get("resources", {}).get(kind)
            if quantities:
                pod_container["resources"][kind] = {k: str(v) for k, v in quantities.items()}
    return doc


def _condition(k8s_job) -> tuple[str, str] | None:
    """``("Failed" | "Complete", "reason: message")`` once the Job has ended, else None."""
    for c in (k8s_job.status.conditions or []) if k8s_job.status else []:
        if c.type in ("Failed", "Complete") and c.status == "True":
            return c.type, f"{c.reason or c.type}: {c.message or 'no message'}"
    return None


class KubernetesExecutor:
    """Validates here, runs each job as a Kubernetes Job, watches the Jobs, deletes one on cancel."""

    def __init__(
        self, store: JobStore, config: RunnerSettings, kubernetes: KubernetesSettings, api_client=None
    ) -> None:
        self.store = store
        self.config = config
        self.kubernetes = kubernetes
        self.template = load_template(kubernetes.job_template)
        self.local = LocalExecutor(store, config)  # its validate(): the same data contract as the local executor
        self._api_client = api_client
        self._batch = None
        self._resource_version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ftops-jobs-k8s", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
                self.wait_for_change()
            except Exception as e:  # the API server or the store is unreachable: wait and look again
                log.warning("fine-tuning executor (kubernetes): %s", redact(f"{type(e).__name__}: {e}"))
                self._stop.wait(self.config.poll_s)

    def batch(self):
        """The ``BatchV1Api``: on the given client, in-cluster with the pod's ServiceAccount, or the kubeconfig's."""
        if self._batch is None:
            from kubernetes import client, config  # the optional extra `kubernetes`: only this executor needs it

            if self._api_client is None:
                try:
                    config.load_incluster_config()
                except config.ConfigException:
                    config.load_kube_config()
                self._api_client = client.ApiClient()
            self._batch = client.BatchV1Api(self._api_client)
        return self._batch

    # ----------------------------------------------------------------------------------------- one pass
    def step(self) -> None:
        """Validate what waits, map the Jobs' state onto the jobs, start queued jobs while there is room."""
        for job in self.store.jobs_with_status("validating_files"):
            if not self._stop.is_set():
                self.local.validate(job)
        self.reconcile()
        self.submit()

    def _ours(self) -> list[dict]:
        return [j for j in self.store.jobs_with_status("running") if (j["worker"] or "").startswith("k8s/")]

    def reconcile(self) -> None:
        listed = self.batch().list_namespaced_job(self.kubernetes.namespace, label_selector=SELECTOR)
        self._resource_version = listed.metadata.resource_version
        k8s_jobs = {j.metadata.labels.get(JOB_LABEL): j for j in listed.items}
        cancelled = set()
        for job in self._ours():
            name = job_name(job["id"])
            if job["cancel_requested"]:
                self.cancel(job)
                cancelled.add(job["id"])
                continue
            k8s_job = k8s_jobs.get(job["id"])
            ended = _condition(k8s_job) if k8s_job is not None else ("Gone", "")
            if ended is None:
                continue
            current = self.store.get_job(job["id"], None)
            if current is None or current["status"] != "running":
                continue  # the pod recorded the outcome meanwhile
            if ended[0] == "Failed":
                self.local._fail(job, "training_failed", f"Kubernetes Job {name} failed: {ended[1]}")
            elif ended[0] == "Gone":
                self.local._fail(job, "job_lost", f"Kubernetes Job {name} is gone (deleted outside ftops?)")
            else:
                self.local._fail(job, "job_lost", f"Kubernetes Job {name} completed without recording an outcome")
        for job_id, k8s_job in k8s_jobs.items():  # a cancelled job's Job left by a cancel that failed half-way
            if job_id in cancelled:
                continue
            row = self.store.get_job(job_id, None) if job_id else None
            if (row is None or row["status"] == "cancelled") and k8s_job.metadata.deletion_timestamp is None:
                self._delete(k8s_job.metadata.name)

    def submit(self) -> None:
        from kubernetes.client import V1Job  # the optional extra `kubernetes`, as in batch()
        from kubernetes.client.exceptions import ApiException  # the optional extra

        room = self.kubernetes.max_running - len(self._ours())
        while room > 0 and not self._stop.is_set():
            job = self.store.next_queued()
            if job is None:
                return
            name = job_name(job["id"])
            if not self.store.update_job(job["id"], only_if=("queued",), status="running", worker=f"k8s/{name}"):
                continue  # cancelled, or another replica took it
            files = {p: self.store.get_file(job["request"][p], None) for p in FILE_ENV if job["request"].get(p)}
            if any(row is None for row in files.values()):
                self.local._fail(job, "invalid_file", "an uploaded file of this job was deleted", "training_file")
                continue
            body = render_job(self.template, job, files, self.kubernetes.namespace)
            try:
                self.batch().create_namespaced_job(self.kubernetes.namespace, V1Job.from_dict(body))
            except ApiException as e:
                if e.status == 409:  # made before a restart of this executor: it is this job's
                    log.info("Kubernetes Job %s exists already; following it", name)
                elif e.status in RETRYABLE:
                    self.store.update_job(job["id"], only_if=("running",), status="queued", worker=None)
                    log.warning("Kubernetes Job %s: %s %s; trying again later", name, e.status, e.reason)
                    return
                else:
                    why = redact(f"{e.status} {e.reason}: {_status_message(e)}")
                    self.local._fail(job, "kubernetes_refused", f"Kubernetes refused Job {name}: {why}")
                    continue
            room -= 1
            self.store.add_event(
                job["id"],
                f"Kubernetes Job {name} created in namespace {self.kubernetes.namespace}; training starts when its pod "
                "is scheduled on a GPU node",
            )

    def cancel(self, job: dict) -> None:
        """Delete the job's Job (its pod is stopped at once), then mark the job cancelled."""
        self._delete(job_name(job["id"]))
        if self.store.update_job(
            job["id"], only_if=("running",), status="cancelled", finished_at=int(time.time()), estimated_finish=None
        ):
            self.store.add_event(job["id"], f"The job was cancelled; Kubernetes Job {job_name(job['id'])} was deleted")

    def _delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException  # the optional extra

        try:
            self.batch().delete_namespaced_job(name, self.kubernetes.namespace, propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                raise

    def wait_for_change(self) -> None:
        """Until a Job of ours changes after the last list, or ``poll_s`` passed (new queued jobs, cancels)."""
        from kubernetes import watch  # the optional extra

        w = watch.Watch()
        for _event in w.stream(
            self.batch().list_namespaced_job,
            self.kubernetes.namespace,
            label_selector=SELECTOR,
            resource_version=self._resource_version,
            timeout_seconds=max(1, int(self.config.poll_s)),
        ):
            w.stop()
            break


def _status_message(e) -> str:
    """The ``message`` of the API server's Status body (one line), or the raw reason."""
    try:
        return str(json.loads(e.body).get("message", ""))[:500]
    except (TypeError, ValueError):
        return str(e.reason)
