"""The fine-tuning API's Kubernetes executor (jobs/k8s_executor.py), checked as far as this machine allows.

No Kubernetes API server, kind or k3s can run here. What is real: the job store (SQLite), uploaded files and their
sha256, the Job template of k8s/base/jobs-api/, the official ``kubernetes`` client and its serialization, and the
Kubernetes 1.33 schema (``kubernetes-validate --strict``, as tests/test_k8s.py). What the client talks to is
``StandInApiServer`` below: a local HTTP server that STANDS IN FOR THE KUBERNETES API SERVER. It answers only the
``batch/v1`` Job calls the executor makes (list, watch, create, delete), keeps the Jobs in a dict, records every
call, and sets a Job's conditions when a test tells it to. It does not validate objects as the API server does (the
schema check does that, on the body the client sent), does not authorize (RBAC is in k8s/base/jobs-api.yaml and
checked there), and runs no controller: no pod is scheduled, no GPU is allocated, no container runs, no Job
condition appears unless a test sets it. So scheduling, pods, GPUs, podFailurePolicy and the pod's own run
(``ftops jobs run-one``, which tests/test_jobs_api.py exercises as the local executor's steps) are not exercised here.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import kubernetes_validate
import pytest
import yaml

from ftops.errors import UsageError
from ftops.jobs.k8s_executor import (
    JOB_LABEL,
    KubernetesExecutor,
    KubernetesSettings,
    job_name,
    load_template,
)
from ftops.jobs.runner import RunnerSettings
from ftops.jobs.store import JobStore

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "k8s" / "base" / "jobs-api" / "train-job-template.yaml"
KUBERNETES_VERSION = "1.33"
JOBS = "/apis/batch/v1/namespaces/ftops/jobs"
DB_PASSWORD = "s3cret-db-pass-9137"


# ---------------------------------------------------------------------------------------------------------------
# The stand-in for the Kubernetes API server (see the module doc for what it is not)


class StandInApiServer:
    """Answers list/watch/create/delete of batch/v1 Jobs in namespace ftops; records every call."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}
        self.calls: list[dict] = []
        self.events: list[tuple[int, str, dict]] = []  # (resourceVersion, type, object)
        self.refuse_next: tuple[int, str] | None = None  # (status, reason) the next create answers
        self.rv = 100
        self.changed = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self, body: dict | None = None) -> tuple[str, dict]:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                server.calls.append({"method": self.command, "path": url.path, "query": query, "body": body})
                return url.path, query

            def do_GET(self) -> None:
                path, query = self._record()
                if path != JOBS:
                    return self._send(404, _status(404, "NotFound", f"the stand-in answers {JOBS} only"))
                if query.get("watch") == "true":
                    return self._watch(int(query.get("resourceVersion") or 0), int(query.get("timeoutSeconds", 1)))
                items = [j for j in server.jobs.values() if _selected(j, query.get("labelSelector"))]
                self._send(
                    200,
                    {
                        "kind": "JobList",
                        "apiVersion": "batch/v1",
                        "metadata": {"resourceVersion": str(server.rv)},
                        "items": items,
                    },
                )

            def _watch(self, since: int, timeout: int) -> None:
                with server.changed:
                    server.changed.wait_for(lambda: any(rv > since for rv, _, _ in server.events), timeout)
                    events = [(t, o) for rv, t, o in server.events if rv > since]
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                for kind, obj in events:
                    self.wfile.write((json.dumps({"type": kind, "object": obj}) + "\n").encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                path, _ = self._record(body)
                if server.refuse_next:
                    status, reason = server.refuse_next
                    server.refuse_next = None
                    return self._send(status, _status(status, reason, f"jobs.batch is {reason.lower()}"))
                name = body["metadata"]["name"]
                if name in server.jobs:
                    return self._send(409, _status(409, "AlreadyExists", f'jobs.batch "{name}" already exists'))
                obj = json.loads(json.dumps(body))
                obj["metadata"].update(uid=f"uid-{name}", creationTimestamp="2026-12-02T15:00:00Z")
                obj["status"] = {}
                server.put(obj, "ADDED")
                self._send(201, obj)

            def do_DELETE(self) -> None:
                path, _ = self._record()
                name = path.rsplit("/", 1)[1]
                obj = server.jobs.pop(name, None)
                if obj is None:
                    return self._send(404, _status(404, "NotFound", f'jobs.batch "{name}" not found'))
                server.put(obj, "DELETED", keep=False)
                self._send(200, _status(200, "Success", "deleted"))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def put(self, obj: dict, kind: str = "MODIFIED", keep: bool = True) -> None:
        with self.changed:
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            if keep:
                self.jobs[obj["metadata"]["name"]] = obj
            self.events.append((self.rv, kind, obj))
            self.changed.notify_all()

    def set_condition(self, name: str, type: str, reason: str, message: str) -> None:
        """What the Job controller would do; nothing here does it by itself."""
        obj = json.loads(json.dumps(self.jobs[name]))
        obj["status"] = {"conditions": [{"type": type, "status": "True", "reason": reason, "message": message}]}
        self.put(obj)

    def posted(self) -> list[dict]:
        return [c["body"] for c in self.calls if c["method"] == "POST"]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


def _selected(obj: dict, selector: str | None) -> bool:
    if not selector:
        return True
    labels = obj["metadata"].get("labels", {})
    return all(labels.get(k) == v for k, v in (term.split("=", 1) for term in selector.split(",")))


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: a real job store with real uploads, an executor on the real client


@pytest.fixture
def api():
    server = StandInApiServer()
    yield server
    server.close()


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("FTOPS_HOME", str(tmp_path / "home"))
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path / "files")
    yield store
    store.close()


def _executor(store: JobStore, api: StandInApiServer, max_running: int = 1) -> KubernetesExecutor:
    from kubernetes import client

    configuration = client.Configuration(host=api.url)
    runner = RunnerSettings(train_config=Path("unused.yaml"), policy=Path("unused.yaml"), learning_rate=2e-4, poll_s=1)
    return KubernetesExecutor(
        store, runner, KubernetesSettings(TEMPLATE, "ftops", max_running), api_client=client.ApiClient(configuration)
    )


def _queued_job(store: JobStore, data: bytes, validation: bytes | None = None) -> tuple[dict, dict]:
    train = store.add_file("alice", "tickets.jsonl", "fine-tune", data)
    valid = store.add_file("alice", "valid.jsonl", "fine-tune", validation) if validation else None
    request = {
        "model": "smollm2-135m-instruct",
        "training_file": train["id"],
        "validation_file": valid["id"] if valid else None,
        "hyperparameters": {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"},
        "suffix": "tickets",
        "seed": 42,
        "metadata": None,
    }
    return store.add_job("alice", request, status="queued"), {"training_file": train, "validation_file": valid}


DATA = b'{"messages": [{"role": "user", "content": "order 1234 is late"}, {"role": "assistant", "content": "{}"}]}\n'


def _container(doc: dict) -> dict:
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return container


# ---------------------------------------------------------------------------------------------------------------
# What the executor sends


def test_the_job_sent_for_a_real_job_is_schema_valid_and_says_what_it_must(store, api, monkeypatch):
    from ftops.cli import build_parser

    monkeypatch.setenv("FTOPS_JOBS_URL", f"postgresql://ftops:{DB_PASSWORD}@postgres:5432/ftops_ledger")
    job, files = _queued_job(store, DATA, validation=DATA * 2)
    _executor(store, api).step()
    (sent,) = api.posted()
    kubernetes_validate.validate(sent, KUBERNETES_VERSION, strict=True)
    assert sent["metadata"]["name"] == job_name(job["id"]) and sent["metadata"]["namespace"] == "ftops"
    assert sent["metadata"]["labels"][JOB_LABEL] == job["id"]
    assert sent["spec"]["template"]["metadata"]["labels"][JOB_LABEL] == job["id"]
    pod = sent["spec"]["template"]["spec"]
    container = _container(sent)
    env = {e["name"]: e for e in container["env"]}
    # the job's id, and the digests of the bytes it trains on (computed here, not read from the store)
    assert env["FTOPS_JOB_ID"]["value"] == job["id"]
    assert env["FTOPS_TRAINING_FILE_SHA256"]["value"] == hashlib.sha256(DATA).hexdigest()
    assert env["FTOPS_VALIDATION_FILE_SHA256"]["value"] == hashlib.sha256(DATA * 2).hexdigest()
    assert sent["metadata"]["annotations"]["ftops.dev/training-file"] == files["training_file"]["id"]
    # the command: ftops jobs run-one with the job id, parsed by the ftops parser itself
    args = build_parser().parse_args(container["args"][1:])
    assert container["args"][:3] == ["ftops", "jobs", "run-one"] and args.job_id == "$(FTOPS_JOB_ID)"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_mount = next(m for p, m in mounts.items() if args.config.startswith(p + "/"))
    assert volumes[config_mount["name"]]["configMap"]["name"] == "ftops-jobs"
    # files: read-only from the shared volume the API writes
    files_mount = mounts[env["FTOPS_FILES_DIR"]["value"]]
    assert (
        files_mount["readOnly"] and volumes[files_mount["name"]]["persistentVolumeClaim"]["claimName"] == "ftops-files"
    )
    # resume: FTOPS_HOME is the job's own folder on the checkpoint volume
    home = env["FTOPS_HOME"]["value"]
    assert home.endswith("/$(FTOPS_JOB_ID)")
    (ckpt,) = [m for p, m in mounts.items() if home.startswith(p + "/")]
    assert volumes[ckpt["name"]]["persistentVolumeClaim"]["claimName"] == "ftops-checkpoints"
    assert list(env).index("FTOPS_JOB_ID") < list(env).index("FTOPS_HOME"), "$(VAR) expands earlier entries only"
    # a GPU, and retries that resume
    assert (
        container["resources"]["limits"]["nvidia.com/gpu"]
        == "1"
        == container["resources"]["requests"]["nvidia.com/gpu"]
    )
    assert pod["restartPolicy"] == "Never" and sent["spec"]["backoffLimit"] > 0
    assert {r["action"] for r in sent["spec"]["podFailurePolicy"]["rules"]} >= {"Ignore", "FailJob"}
    # secrets: from Secrets only, never in a value
    assert env["FTOPS_JOBS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "ftops-jobs", "key": "jobs-url"}
    assert "valueFrom" in env["MLFLOW_TRACKING_PASSWORD"] and "value" not in env["MLFLOW_TRACKING_PASSWORD"]
    assert DB_PASSWORD not in json.dumps(api.calls)
    assert pod["automountServiceAccountToken"] is False, "the training pod needs no Kubernetes API"


def test_a_job_without_validation_file_carries_no_validation_digest(store, api):
    _queued_job(store, DATA)
    _executor(store, api).step()
    env = {e["name"]: e.get("value") for e in _container(api.posted()[0])["env"]}
    assert (
        env["FTOPS_VALIDATION_FILE_SHA256"] == ""
        and env["FTOPS_TRAINING_FILE_SHA256"] == hashlib.sha256(DATA).hexdigest()
    )


def test_the_template_is_refused_naming_every_problem(tmp_path):
    doc = yaml.safe_load(TEMPLATE.read_text())
    container = _container(doc)
    container["args"] = ["ftops", "jobs", "run-one", "ftjob-fixed"]
    container["env"] = [e for e in container["env"] if e["name"] not in ("FTOPS_TRAINING_FILE_SHA256", "FTOPS_HOME")]
    doc["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    bad = tmp_path / "template.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(UsageError) as e:
        load_template(bad)
    message = str(e.value)
    assert message.startswith(f"{bad}: ")
    for problem in (
        "restartPolicy must be Never",
        "no env FTOPS_TRAINING_FILE_SHA256",
        "must pass $(FTOPS_JOB_ID)",
        "FTOPS_HOME",
    ):
        assert problem in message


# ---------------------------------------------------------------------------------------------------------------
# Create, watch, cancel, and what the pod cannot report, against the stand-in


def test_create_once_watch_the_failed_condition_and_fail_the_job_with_its_reason(store, api):
    job, _ = _queued_job(store, DATA)
    second, _ = _queued_job(store, DATA)
    executor = _executor(store, api, max_running=1)
    executor.step()
    executor.step()  # the Job exists: not created again; max_running 1: the second job waits
    assert [b["metadata"]["name"] for b in api.posted()] == [job_name(job["id"])]
    row = store.get_job(job["id"], None)
    assert row["status"] == "running" and row["worker"] == f"k8s/{job_name(job['id'])}"
    assert store.get_job(second["id"], None)["status"] == "queued"
    events = [e["message"] for e in store.events(job["id"], None, 20)[0]]
    assert any(f"Kubernetes Job {job_name(job['id'])} created" in m for m in events)

    # the watch from the list's resourceVersion wakes on the Job's change (and only then: nothing changed before)
    api.set_condition(
        job_name(job["id"]), "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
    )
    executor.wait_for_change()
    watch = [c for c in api.calls if c["query"].get("watch") == "true"][-1]
    assert (
        watch["query"]["resourceVersion"]
        and watch["query"]["labelSelector"] == "app.kubernetes.io/managed-by=ftops-jobs-api"
    )
    executor.step()
    row = store.get_job(job["id"], None)
    assert row["status"] == "failed" and row["error"]["code"] == "training_failed"
    assert "BackoffLimitExceeded: Job has reached the specified backoff limit" in row["error"]["message"]
    # room again: the second job's Job is created
    assert [b["metadata"]["name"] for b in api.posted()][-1] == job_name(second["id"])


def test_cancel_deletes_the_job_and_marks_it_cancelled(store, api):
    job, _ = _queued_job(store, DATA)
    executor = _executor(store, api)
    executor.step()
    store.update_job(job["id"], cancel_requested=True)  # what POST /v1/fine_tuning/jobs/{id}/cancel records
    executor.step()
    (delete,) = [c for c in api.calls if c["method"] == "DELETE"]
    assert delete["path"] == f"{JOBS}/{job_name(job['id'])}" and delete["query"]["propagationPolicy"] == "Background"
    assert job_name(job["id"]) not in api.jobs
    row = store.get_job(job["id"], None)
    assert row["status"] == "cancelled" and row["finished_at"]


def test_the_outcome_the_pod_recorded_stands(store, api):
    job, _ = _queued_job(store, DATA)
    executor = _executor(store, api)
    executor.step()
    store.update_job(job["id"], status="succeeded", fine_tuned_model="smollm2-135m-instruct-tickets:1")
    api.set_condition(
        job_name(job["id"]), "Complete", "CompletionsReached", "Reached expected number of succeeded pods"
    )
    executor.step()
    assert store.get_job(job["id"], None)["status"] == "succeeded"
    assert not [c for c in api.calls if c["method"] == "DELETE"], "a finished Job stays for its logs (ttl)"


def test_a_job_deleted_outside_ftops_or_completed_silently_fails_the_job(store, api):
    gone, _ = _queued_job(store, DATA)
    silent, _ = _queued_job(store, DATA)
    executor = _executor(store, api, max_running=2)
    executor.step()
    del api.jobs[job_name(gone["id"])]
    api.set_condition(
        job_name(silent["id"]), "Complete", "CompletionsReached", "Reached expected number of succeeded pods"
    )
    executor.step()
    assert store.get_job(gone["id"], None)["error"]["code"] == "job_lost"
    assert "is gone" in store.get_job(gone["id"], None)["error"]["message"]
    assert "completed without recording an outcome" in store.get_job(silent["id"], None)["error"]["message"]


def test_a_refused_create_fails_the_job_and_a_busy_server_requeues_it(store, api):
    refused, _ = _queued_job(store, DATA)
    executor = _executor(store, api)
    api.refuse_next = (403, "Forbidden")  # e.g. the Role is missing
    executor.step()
    row = store.get_job(refused["id"], None)
    assert row["status"] == "failed" and row["error"]["code"] == "kubernetes_refused"
    assert "403 Forbidden: jobs.batch is forbidden" in row["error"]["message"]
    busy, _ = _queued_job(store, DATA)
    api.refuse_next = (503, "ServiceUnavailable")
    executor.step()
    assert store.get_job(busy["id"], None)["status"] == "queued" and store.get_job(busy["id"], None)["worker"] is None
    executor.step()
    assert store.get_job(busy["id"], None)["status"] == "running" and job_name(busy["id"]) in api.jobs


# ---------------------------------------------------------------------------------------------------------------
# The pod's side: the bytes it trains on are the bytes the Job names


def test_run_one_refuses_bytes_that_are_not_the_ones_the_job_was_made_for(store, monkeypatch, tmp_path, capsys):
    from ftops.cli import main

    job, files = _queued_job(store, DATA)
    store.update_job(job["id"], status="running", worker=f"k8s/{job_name(job['id'])}")
    config = tmp_path / "jobs.yaml"
    config.write_text(yaml.safe_dump({"url": store.url, "files_dir": str(store.files_dir)}))
    monkeypatch.setenv("FTOPS_TRAINING_FILE_SHA256", hashlib.sha256(b"other bytes").hexdigest())
    monkeypatch.setenv("POD_NAME", "ftops-pod-0")
    assert main(["jobs", "run-one", job["id"], "--config", str(config)]) == 0  # the outcome is recorded: no retry
    row = store.get_job(job["id"], None)
    assert row["status"] == "failed" and row["error"]["code"] == "invalid_file"
    assert hashlib.sha256(b"other bytes").hexdigest() in row["error"]["message"]
    assert files["training_file"]["sha256"] in row["error"]["message"]
    assert main(["jobs", "run-one", job["id"], "--config", str(config)]) == 0  # a retried pod: nothing to do
    assert "failed" in capsys.readouterr().out
    queued, _ = _queued_job(store, DATA)
    assert main(["jobs", "run-one", queued["id"], "--config", str(config)]) == 1, "only a job its executor started"


# ---------------------------------------------------------------------------------------------------------------
# The pod's command, run here as the pod would run it (no container, no GPU: the tiny base on the CPU)


def _pod_env(container: dict, paths: dict[str, Path], secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """The container's environment as the kubelet would give it: ``$(VAR)`` expanded from earlier entries, Secrets
    from ``secrets``, the pod name for its fieldRef, and each mount path mapped onto a folder here (``paths``)."""
    import re

    env: dict[str, str] = {}
    for entry in container["env"]:
        if "valueFrom" in entry:
            source = entry["valueFrom"]
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                if (ref["name"], ref["key"]) in secrets:
                    env[entry["name"]] = secrets[(ref["name"], ref["key"])]
            else:
                env[entry["name"]] = "ftops-ftjob-pod-0"
            continue
        value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), entry["value"])
        for mount, local in paths.items():
            if value == mount or value.startswith(mount + "/"):
                value = str(local) + value[len(mount) :]
        env[entry["name"]] = value
    return env


def test_the_pods_command_trains_gates_and_records_the_outcome_in_the_shared_store(
    tiny_base, models_dir, store, api, tmp_path
):
    import os
    import subprocess
    import sys

    from ftops.expectations.demo_data import generate_tickets
    from tests.test_jobs_api import POLICY, TRAIN

    rows = "".join(json.dumps(r) + "\n" for r in generate_tickets(200, seed=3)).encode()
    job, _ = _queued_job(store, rows)
    auto = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}  # max_steps: 2
    store.update_job(job["id"], request={**job["request"], "model": "tiny-llama", "hyperparameters": auto})
    _executor(store, api).step()
    (sent,) = api.posted()
    container = _container(sent)
    # the mounts, here: the ConfigMap's jobs settings (pointed at the tiny job config), the files volume (the API's
    # folder), the checkpoint volume, the models volume, HOME
    (tmp_path / "etc").mkdir()
    (tmp_path / "train.yaml").write_text(TRAIN)
    (tmp_path / "policy.yaml").write_text(POLICY)
    jobs_yaml = yaml.safe_load((ROOT / "k8s" / "base" / "jobs-api" / "jobs.yaml").read_text())
    jobs_yaml.update(
        train_config=str(tmp_path / "train.yaml"),
        policy=str(tmp_path / "policy.yaml"),
        gate_options=["--engine", "transformers", "--max-new-tokens", "4", "--no-regression"],
        poll_s=0.5,
        files_dir=str(store.files_dir),  # /files, the volume's mount path
    )
    (tmp_path / "etc" / "jobs.yaml").write_text(yaml.safe_dump(jobs_yaml))
    paths = {
        "/etc/ftops-jobs": tmp_path / "etc",
        "/files": store.files_dir,
        "/checkpoints": tmp_path / "checkpoints",
        "/models/ftops": models_dir,
        "/home/ftops": tmp_path / "home-ftops",
    }
    env = _pod_env(container, paths, {("ftops-jobs", "jobs-url"): store.url})
    del env["MLFLOW_TRACKING_URI"]  # no MLflow server here: the pod's embedded store under its FTOPS_HOME
    args = [a.replace("$(FTOPS_JOB_ID)", env["FTOPS_JOB_ID"]) for a in container["args"]]
    args = [
        str(paths["/etc/ftops-jobs"]) + a[len("/etc/ftops-jobs") :] if a.startswith("/etc/ftops-jobs/") else a
        for a in args
    ]
    assert args[:4] == ["ftops", "jobs", "run-one", job["id"]]
    proc = subprocess.run(
        [sys.executable, "-m", "ftops.cli", *args[1:]],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = store.get_job(job["id"], None)
    assert row["status"] == "succeeded", row["error"]
    assert row["fine_tuned_model"] == "tiny-llama-tickets:1" and row["trained_tokens"] > 0
    assert row["worker"] == "k8s/ftops-ftjob-pod-0"
    messages = [e["message"] for e in store.events(job["id"], None, 100)[0]]
    assert "Pod k8s/ftops-ftjob-pod-0 started the job" in messages
    assert any(m.startswith("Gate verdict: pass") for m in messages)
    assert store.checkpoints(job["id"], None, 10)[0], "the job's checkpoints, found on the checkpoint volume"
    assert (tmp_path / "checkpoints" / job["id"] / "checkpoints" / row["run_id"]).is_dir()
    assert proc.stdout.strip().splitlines()[-1] == f"ftops jobs: {job['id']}: succeeded"


def test_a_pod_without_its_files_fails_the_job_saying_where_it_looked(store, tmp_path):
    from ftops.cli import main

    job, _ = _queued_job(store, DATA)
    store.update_job(job["id"], status="running", worker=f"k8s/{job_name(job['id'])}")
    config = tmp_path / "jobs.yaml"
    config.write_text(yaml.safe_dump({"url": store.url, "files_dir": str(tmp_path / "not-mounted")}))
    assert main(["jobs", "run-one", job["id"], "--config", str(config)]) == 0
    error = store.get_job(job["id"], None)["error"]
    assert (
        error["code"] == "invalid_file"
        and str(tmp_path / "not-mounted" / job["request"]["training_file"]) in error["message"]
    )


# ---------------------------------------------------------------------------------------------------------------
# The jobs API Deployment's command: the API alone, behind the same keys as ftops serve


def test_ftops_jobs_serve_answers_the_api_behind_the_keys_and_keeps_tenants_apart(tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from openai import NotFoundError, OpenAI

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"bob": "sk-bob-0123456789abcdef01"}))
    env = {
        **os.environ,
        "FTOPS_HOME": str(tmp_path / "home"),
        "FTOPS_API_KEY": "sk-alice-0123456789abcdef",
        "FTOPS_ADMIN_KEY": "sk-admin-0123456789abcdef",
    }
    argv = [sys.executable, "-m", "ftops.cli", "jobs", "serve", "--port", str(port), "--keys-file", str(keys)]
    short = subprocess.run(argv, env={**env, "FTOPS_API_KEY": "k3y-too-sh0rt"}, capture_output=True, text=True)
    assert short.returncode == 2 and "API keys default are shorter than 16" in short.stderr
    assert "k3y-too-sh0rt" not in short.stderr, "a key is never printed"
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/livez") as r:
                    assert r.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None and time.monotonic() < deadline, "ftops jobs serve did not start"
                time.sleep(0.5)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}/v1/files")
        assert e.value.code == 401 and json.loads(e.value.read())["error"]["code"] == "invalid_api_key"
        alice = OpenAI(base_url=f"{url}/v1", api_key=env["FTOPS_API_KEY"], max_retries=0)
        bob = OpenAI(base_url=f"{url}/v1", api_key="sk-bob-0123456789abcdef01", max_retries=0)
        admin = OpenAI(base_url=f"{url}/v1", api_key=env["FTOPS_ADMIN_KEY"], max_retries=0)
        file = alice.files.create(file=("tickets.jsonl", DATA), purpose="fine-tune")
        assert alice.files.content(file.id).read() == DATA
        with pytest.raises(NotFoundError):
            bob.files.retrieve(file.id)
        assert [f.id for f in admin.files.list()] == [file.id] and [f.id for f in bob.files.list()] == []
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    out = proc.stdout.read().decode()
    assert proc.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in out, out[-2000:]
