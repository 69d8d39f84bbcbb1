"""The cluster of k8s/, made of real processes on this machine: run it alone with ``pytest -m cluster``.

What runs for real: PostgreSQL (Debian's server; databases made by the StatefulSet's own init script), an
S3-compatible server (moto's, **standing in for S3 / the in-cluster MinIO**), ``mlflow server`` with the
command, arguments and environment of ``k8s/base/mlflow.yaml`` (basic-auth app, proxied artifacts, the allowed hosts),
its schema migrated by the commands of ``k8s/base/mlflow-migrate-job.yaml``, the training command of
``k8s/train-job.yaml``, the gate and promote Jobs' commands, and two ``ftops serve`` replicas made from the serving
ConfigMap by the Deployment's own init container, sharing one PostgreSQL ledger.

What stands in for what cannot run here:
- the kubelet: each container runs as a process, its command, args and env read from the manifest (Secrets from
  ``k8s/secret.example.yaml`` with every CHANGE-ME and cluster host replaced, fieldRefs given), its volume mounts
  mapped to folders; only ``--host``/``--port`` change (every pod has its own network namespace, these share one);
- cluster DNS and the Service: a forwarding HTTP proxy (``HTTP_PROXY`` in each process) that takes the Service names
  of the manifests (``mlflow.ftops.svc.cluster.local:5000``) to the process; the Host header is the Service name, as
  in the cluster, so MLflow's Host check is exercised as a pod would meet it;
- GPUs: the tiny base on CPU, with a CPU engine config laid over the ConfigMap's (base and engine only).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import LEARNED_ADAPTER, REPO, free_port, kill_tree, log_adapter_run, wait_http, wait_ready
from test_cost_postgres import PG_BIN, pg_url  # noqa: F401  (the throwaway PostgreSQL cluster fixture)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

K8S = REPO / "k8s"
MODEL = "ticket-extractor"  # the name the gate and promote Jobs use
MLFLOW_SERVICE = "mlflow.ftops.svc.cluster.local:5000"
REPLICAS = ("ftops-serve-7d4b9-a", "ftops-serve-7d4b9-b")  # the pods' names (metadata.name), the ledger's replica
START_S = 600  # give-up points for a loaded 2-core machine, not timing assertions
SWAP_S = 180
LENIENT = "# the tiny base answers no ticket: only the gate's mechanics are under test here\n"
LENIENT += "name: cluster-test\nrules:\n  - {metric: accuracy, min: 0.0}\n"
CPU_ENGINE = {"max_model_len": 512, "max_lora_rank": 16, "max_loras": 4, "dtype": "float32", "max_num_seqs": 16}


# --- reading the manifests ---
def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifest(path: str, kind: str, name: str) -> dict:
    found = [
        d
        for d in documents(K8S / path)
        if d["kind"] == kind and name in (d["metadata"].get("name"), d["metadata"].get("generateName"))
    ]
    assert len(found) == 1, f"{path}: no single {kind} {name}"
    return found[0]


def container(doc: dict, name: str, *, init: bool = False) -> dict:
    spec = doc["spec"]["template"]["spec"]
    return next(c for c in spec["initContainers" if init else "containers"] if c["name"] == name)


def rendered_secrets(replacements: dict[str, str]) -> dict[str, dict[str, str]]:
    """``k8s/secret.example.yaml`` as a user fills it in: every CHANGE-ME replaced by a value of its own, and the
    cluster hosts by where these processes listen."""
    text = (K8S / "secret.example.yaml").read_text()
    for old, new in replacements.items():
        text = text.replace(old, new)
    values: dict[str, str] = {}  # one value per placeholder: the copies of one password stay equal
    text = re.sub(r"CHANGE-ME[\w-]*", lambda m: values.setdefault(m[0], f"{m[0][10:]}-{secrets.token_hex(8)}"), text)
    return {d["metadata"]["name"]: d["stringData"] for d in yaml.safe_load_all(text) if d}


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (an unknown name stays as written)."""
    return _VAR.sub(lambda m: env.get(m[1], m[0]), value)


class Pod:
    """What a kubelet makes of one container: its argv and environment, with the volume mounts mapped to folders."""

    def __init__(
        self,
        spec: dict,
        secret: dict,
        mounts: dict[str, Path],
        fields: dict[str, str] | None = None,
        set_env: dict[str, str] | None = None,
    ):
        """``fields``: the downward API's values by fieldPath; ``set_env``: what ``kubectl set env`` would set."""
        self.mounts = sorted(mounts.items(), key=lambda kv: -len(kv[0]))
        env: dict[str, str] = {}
        for item in spec.get("env", []):
            if item["name"] in (set_env or {}):
                env[item["name"]] = set_env[item["name"]]
            elif "value" in item:
                env[item["name"]] = self.path(expand(item["value"], env))
            elif ref := item["valueFrom"].get("secretKeyRef"):
                env[item["name"]] = secret[ref["name"]][ref["key"]]
            else:
                env[item["name"]] = (fields or {})[item["valueFrom"]["fieldRef"]["fieldPath"]]
        self.env = env
        self.argv = [self.path(expand(a, env)) for a in [*spec.get("command", []), *spec.get("args", [])]]

    def path(self, value: str) -> str:
        """``value`` with each mounted path (at its start, after ``=``, a quote or a space) replaced by its folder."""
        for mount, folder in self.mounts:
            value = re.sub(rf"(^|[=\"'\s]){re.escape(mount)}(?=[/\"'\s]|$)", lambda m, f=folder: m[1] + str(f), value)
        return value

    def process_env(self, **extra: str) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FTOPS_", "AWS_"))}
        path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # the image's PATH: ftops, mlflow, python
        return {**keep, "PATH": path, **self.env, **extra}


def set_arg(argv: list[str], flag: str, value: str) -> list[str]:
    i = argv.index(flag)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


def without_arg(argv: list[str], flag: str) -> list[str]:
    i = argv.index(flag)
    return argv[:i] + argv[i + 2 :]


def run(argv: list[str], env: dict[str, str], log: Path, timeout: float = START_S) -> str:
    """Run a Job's container to completion (cwd: the image's WORKDIR, the repository); its output, or a failure with
    the log's tail."""
    with open(log, "w") as out:
        proc = subprocess.run(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    text = log.read_text()
    assert proc.returncode == 0, f"{shlex.join(argv[:4])}... exited {proc.returncode}:\n{text[-5000:]}"
    return text


# --- the cluster's DNS and Service, for HTTP ---
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class ServiceProxy(ThreadingHTTPServer):
    """A forwarding HTTP proxy: a request for ``http://NAME:PORT/...`` goes to the process behind ``NAME:PORT``
    (``routes``), its Host header unchanged; any other name gets 502, as an unknown Service would not resolve."""

    daemon_threads = True

    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, int]] = {}
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _ProxyHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _forward(self) -> None:
        target = urlsplit(self.path)
        backend = self.server.routes.get(target.netloc)
        if target.scheme != "http" or backend is None:
            self.send_error(502, f"no Service answers {target.netloc or self.path}")
            return
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        connection = http.client.HTTPConnection(*backend, timeout=300)
        try:
            connection.request(
                self.command, target.path + (f"?{target.query}" if target.query else ""), bytes(body), headers
            )
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        self.send_response(response.status, response.reason)
        for k, v in response.getheaders():
            if k.lower() not in HOP | {"content-length"}:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward


def via_service(proxy: ServiceProxy, url: str, *, auth: tuple[str, str] | None = None, method: str = "GET"):
    """(status, body) of one request through the Service proxy, as a pod makes it."""
    import base64

    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers, method=method), timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# --- processes ---
def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


# --- the cluster ---
class Cluster:
    def __init__(self, root: Path, secret: dict, proxy: ServiceProxy, s3_url: str):
        self.root, self.secret, self.proxy, self.s3_url = root, secret, proxy, s3_url
        self.mlflow: subprocess.Popen | None = None
        user = secret["ftops-mlflow-client"]
        self.auth = (user["MLFLOW_TRACKING_USERNAME"], user["MLFLOW_TRACKING_PASSWORD"])  # what the pods log in as

    def folder(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def client_env(self, pod: Pod, **extra: str) -> dict[str, str]:
        """A pod's environment, plus the Service proxy for HTTP (loopback, where this machine's own processes
        listen, goes direct) and the CPU settings of the tests' engines."""
        return pod.process_env(
            HTTP_PROXY=self.proxy.url,
            http_proxy=self.proxy.url,
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
            VLLM_CPU_KVCACHE_SPACE="1",
            **extra,
        )

    def mlflow_pod(self) -> Pod:
        doc = manifest("base/mlflow.yaml", "Deployment", "mlflow")
        mounts = {"/etc/mlflow-auth": self.folder("mlflow", "auth"), "/home/mlflow": self.folder("mlflow", "home")}
        ini = self.secret["ftops-mlflow"]["basic_auth.ini"]
        (mounts["/etc/mlflow-auth"] / "basic_auth.ini").write_text(ini)  # the Secret volume's one item
        return Pod(container(doc, "mlflow"), self.secret, mounts)

    def start_mlflow(self, argv: list[str], pod: Pod, log: str) -> None:
        port = free_port()
        argv = set_arg(set_arg(argv, "--host", "127.0.0.1"), "--port", str(port))
        self.mlflow = start(argv, pod.process_env(), self.root / log)
        wait_http(f"http://127.0.0.1:{port}/health", self.mlflow, self.root / log, "mlflow server")
        self.proxy.routes[MLFLOW_SERVICE] = ("127.0.0.1", port)  # the Service the pods' MLFLOW_TRACKING_URI names

    def stop_mlflow(self) -> None:
        if self.mlflow is not None:
            kill_tree(self.mlflow)
            self.mlflow = None


@pytest.fixture(scope="module")
def cluster(pg_url, tmp_path_factory):  # noqa: F811
    """PostgreSQL with the StatefulSet's databases, the S3 stand-in with the bucket the migrate Job creates, the
    migrated MLflow schema; yields a :class:`Cluster` (MLflow not started yet)."""
    pytest.importorskip("moto", reason="the S3 stand-in is moto's server: pip install 'moto[server]'")
    import psycopg2

    root = tmp_path_factory.mktemp("cluster")
    proxy = ServiceProxy()
    pg_port = urlsplit(pg_url).port
    s3_port = free_port()
    s3 = start(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(s3_port)],
        dict(os.environ),
        root / "s3.log",
    )
    try:
        s3_url = f"http://127.0.0.1:{s3_port}"
        wait_http(s3_url, s3, root / "s3.log", "the S3 stand-in (moto)")
        secret = rendered_secrets(
            {
                "postgres.ftops.svc.cluster.local:5432": f"127.0.0.1:{pg_port}",
                "http://minio.ftops.svc.cluster.local:9000": s3_url,
            }
        )
        # PostgreSQL as its image starts it (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB of the StatefulSet), then the
        # ConfigMap's init script, run as the image runs it; this throwaway server trusts local logins, so the
        # passwords in the URLs are carried but not checked
        pg = manifest("base/postgres.yaml", "StatefulSet", "postgres")
        pod = Pod(container(pg, "postgres"), secret, {})
        user, password, db = (pod.env[k] for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"))
        connection = psycopg2.connect(pg_url)
        connection.autocommit = True
        with connection.cursor() as cur:
            cur.execute(f'CREATE ROLE "{user}" LOGIN SUPERUSER PASSWORD %s', (password,))
            cur.execute(f'CREATE DATABASE "{db}" OWNER "{user}"')
        connection.close()
        script = manifest("base/postgres.yaml", "ConfigMap", "ftops-postgres-init")["data"]["10-ftops.sh"]
        env = pod.process_env(PATH=f"{PG_BIN}:{os.environ['PATH']}", PGHOST="127.0.0.1", PGPORT=str(pg_port))
        subprocess.run(["bash", "-c", script], env=env, check=True, capture_output=True, timeout=60)

        c = Cluster(root, secret, proxy, s3_url)
        # the migrate Job: its init container (the store check, which creates the bucket), then `mlflow db upgrade`
        job = manifest("base/mlflow-migrate-job.yaml", "Job", "mlflow-migrate")
        check_stores = {"/opt/ftops/check_stores.py": K8S / "mlflow" / "check_stores.py"}  # the image's COPY
        for step in (
            Pod(container(job, "check-stores", init=True), secret, check_stores),
            Pod(container(job, "migrate"), secret, {}),
        ):
            run(step.argv, step.process_env(), root / "migrate.log")
        yield c
        c.stop_mlflow()
    finally:
        kill_tree(s3)
        proxy.shutdown()


def test_mlflow_from_its_manifest_refuses_service_names_without_allowed_hosts_and_answers_with_them(cluster):
    """403 for the cluster's name without ``--allowed-hosts`` (``/health`` green all the same: what a probe sees),
    then the manifest's exact arguments: the name answers, with a user only (basic-auth)."""
    pod = cluster.mlflow_pod()
    assert pod.argv[:2] == ["mlflow", "server"] and "--allowed-hosts" in pod.argv and "basic-auth" in pod.argv
    argv = pod.argv  # mlflow server ... as the Deployment gives it (only --host and --port change)
    api = f"http://{MLFLOW_SERVICE}/api/2.0/mlflow/experiments/search?max_results=1"

    cluster.start_mlflow(without_arg(argv, "--allowed-hosts"), pod, "mlflow-no-allowed-hosts.log")
    try:
        assert via_service(cluster.proxy, f"http://{MLFLOW_SERVICE}/health")[0] == 200
        status, body = via_service(cluster.proxy, api, auth=cluster.auth)
        assert status == 403, (status, body[:300])
    finally:
        cluster.stop_mlflow()

    cluster.start_mlflow(argv, pod, "mlflow.log")
    status, body = via_service(cluster.proxy, api, auth=cluster.auth)
    assert status == 200, (status, body[:300])
    assert via_service(cluster.proxy, api)[0] == 401  # no user: basic-auth refuses
    assert via_service(cluster.proxy, "http://mlflow.elsewhere.example:5000/health")[0] == 502  # no such Service


@pytest.fixture(scope="module")
def models(cluster, models_dir, tiny_base):
    """The models volume: FTOPS_MODELS=/models/ftops (the tiny base's record) and the replay file the train Job
    names (written by base-import-job.yaml on a cluster; general prompts here, which no held-out ticket shares)."""
    volume = cluster.folder("volumes", "models")
    replay = [  # the data check wants 10 examples or more in every file
        [{"role": "user", "content": f"What is {a} + {b}?"}, {"role": "assistant", "content": f"{a + b}."}]
        for a, b in zip(range(2, 14), range(7, 19), strict=True)
    ]
    (volume / "replay").mkdir(exist_ok=True)
    (volume / "replay" / "smollm2-135m-instruct.jsonl").write_text(
        "".join(json.dumps({"messages": m}) + "\n" for m in replay)
    )
    return {"/models/ftops": models_dir, "/models": volume}


def _job_pod(cluster: Cluster, path: str, name: str, mounts: dict[str, Path], **kw) -> Pod:
    doc = manifest(path, "Job", name)
    return Pod(container(doc, doc["spec"]["template"]["spec"]["containers"][0]["name"]), cluster.secret, mounts, **kw)


def gate_and_promote(cluster: Cluster, models: dict, run_id: str, log: str) -> None:
    """The gate Job for ``run_id`` (``kubectl set env RUN_ID=...``), then the promote Job, as their manifests run them;
    the gate is told the tiny base's sizes (a lenient policy, the transformers engine, 4 examples, 8 tokens)."""
    policy = cluster.folder("policies") / "cluster-test.yaml"
    policy.write_text(LENIENT)
    home = {"/home/ftops": cluster.folder("gate-home")}
    gate = _job_pod(cluster, "gate-job.yaml", "ftops-gate-", {**models, **home}, set_env={"RUN_ID": run_id})
    assert run_id in gate.argv
    sizes = ["--policy", str(policy), "--engine", "transformers", "--max-new-tokens", "8", "--max-examples", "4"]
    run([*gate.argv, *sizes, "--no-regression"], cluster.client_env(gate), cluster.root / f"gate-{log}.log")
    promote = _job_pod(cluster, "promote-job.yaml", "ftops-promote-", {**models, **home})
    run(promote.argv, cluster.client_env(promote), cluster.root / f"promote-{log}.log")


@pytest.fixture(scope="module")
def promoted(cluster, models):
    """The train Job's own command on the tiny base (sizes laid over configs/gpu.yaml), then the gate and promote
    Jobs' commands, all over HTTP to the MLflow Service; returns (run id, model version)."""
    assert cluster.mlflow is not None, "test_mlflow_from_its_manifest... starts the server"
    data = cluster.folder("volumes", "train-data")
    subprocess.run(
        [sys.executable, "-m", "ftops.cli", "data", "generate", "-n", "200", str(data / "all.jsonl")],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [sys.executable, "-m", "ftops.cli", "data", "split", str(data / "all.jsonl"), "--out", str(data)],
        check=True,
        capture_output=True,
    )
    mounts = {
        **models,
        "/data": data,
        "/checkpoints": cluster.folder("volumes", "checkpoints"),
        "/home/ftops": cluster.folder("train-home"),
    }
    job = "ftops-train-tickets"
    pod = _job_pod(
        cluster, "train-job.yaml", job, mounts, fields={"metadata.labels['batch.kubernetes.io/job-name']": job}
    )
    assert pod.argv[:2] == ["/bin/sh", "-c"] and "resume=" in pod.argv[2]  # the resume wrapper, then `ftops train ...`
    sizes = ["base=tiny-llama", "max_steps=2", "eval_steps=2", "save_steps=1", "batch_size=4", "max_seq_length=256"]
    out = run(pod.argv + sizes, cluster.client_env(pod), cluster.root / "train.log")
    run_id = out.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f]{32}", run_id), out[-2000:]

    gate_and_promote(cluster, models, run_id, "1")
    return run_id, "1"


def _mlflow(cluster: Cluster, monkeypatch):
    """This test process as a pod: the MLflow Service through the proxy, with the client user."""
    import mlflow

    for k, v in {
        "MLFLOW_TRACKING_URI": f"http://{MLFLOW_SERVICE}",
        "MLFLOW_TRACKING_USERNAME": cluster.auth[0],
        "MLFLOW_TRACKING_PASSWORD": cluster.auth[1],
        "HTTP_PROXY": cluster.proxy.url,
        "NO_PROXY": "127.0.0.1,localhost",
    }.items():
        monkeypatch.setenv(k, v)
    return mlflow.MlflowClient(tracking_uri=f"http://{MLFLOW_SERVICE}", registry_uri=f"http://{MLFLOW_SERVICE}")


def test_the_train_jobs_command_trains_and_the_gate_and_promote_jobs_register_it_over_http(
    cluster, promoted, monkeypatch
):
    import boto3

    run_id, version = promoted
    client = _mlflow(cluster, monkeypatch)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["ftops.base.name"] == "tiny-llama"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: pods hold no bucket credentials
    production = client.get_model_version_by_alias(MODEL, "production")
    assert (production.version, production.run_id) == (version, run_id)
    assert production.tags["ftops.gate.verdict"] == "pass"
    # the adapter's bytes are in the bucket the migrate Job created, behind the server
    s3 = boto3.client(
        "s3",
        endpoint_url=cluster.s3_url,
        aws_access_key_id=cluster.secret["ftops-s3"]["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=cluster.secret["ftops-s3"]["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    bucket = urlsplit(cluster.secret["ftops-mlflow"]["MLFLOW_ARTIFACTS_DESTINATION"]).netloc
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]
    assert any(k.endswith("adapter/adapter_model.safetensors") and run_id in k for k in keys), keys[:20]
    # the checkpoint the resume wrapper looks for is on the checkpoints volume, under the Job's name
    states = list(
        (cluster.root / "volumes" / "checkpoints" / "ftops-train-tickets").glob(
            "checkpoints/*/checkpoint-*/trainer_state.json"
        )
    )
    assert states, "no complete checkpoint on the checkpoints volume"
    for log in ("train.log", "gate-1.log", "promote-1.log", "mlflow.log"):
        text = (cluster.root / log).read_text()
        assert cluster.auth[1] not in text and cluster.secret["ftops-postgres"]["password"] not in text, log


# --- two serving replicas on one ledger ---
class Replica:
    def __init__(self, name: str, proc: subprocess.Popen, url: str, log: Path, key: str):
        self.name, self.proc, self.url, self.log, self.key = name, proc, url, log, key


def _start_replica(cluster: Cluster, models: dict, name: str) -> Replica:
    doc = manifest("base/serving.yaml", "Deployment", "ftops-serve")
    configmap = manifest("base/serving.yaml", "ConfigMap", "ftops-serve")["data"]
    pod_root = cluster.folder("pods", name)
    mounts = {
        **models,
        "/etc/ftops-configmap": cluster.folder("pods", name, "configmap"),
        "/etc/ftops": cluster.folder("pods", name, "config"),
        "/home/ftops": cluster.folder("pods", name, "home"),
    }
    for key, text in configmap.items():
        (mounts["/etc/ftops-configmap"] / key).write_text(text)
    init = Pod(container(doc, "config", init=True), cluster.secret, mounts)
    run(init.argv, init.process_env(), pod_root / "init.log", timeout=120)  # python -c SCRIPT
    config_path = mounts["/etc/ftops"] / "serve.yaml"
    config = yaml.safe_load(config_path.read_text())
    assert config["ledger_url"] == cluster.secret["ftops-serve"]["ledger-url"]  # the init container added it
    # a CPU pod: the tiny base and an engine for it; metrics on a port of its own per pod (one network namespace here)
    config |= {"base": "tiny-llama", "engine": CPU_ENGINE, "metrics_port": free_port(), "metrics_host": "127.0.0.1"}
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    pod = Pod(container(doc, "serve"), cluster.secret, mounts, {"metadata.name": name})
    port = free_port()
    argv = set_arg(set_arg(pod.argv, "--host", "127.0.0.1"), "--port", str(port))
    env = cluster.client_env(pod, BENTOML_HOME=str(pod_root / "bentoml"))
    proc = start(argv, env, pod_root / "serve.log")
    return Replica(name, proc, f"http://127.0.0.1:{port}", pod_root / "serve.log", pod.env["FTOPS_API_KEY"])


@pytest.fixture(scope="module")
def replicas(cluster, models, promoted):
    started = [_start_replica(cluster, models, name) for name in REPLICAS]
    try:
        for r in started:
            wait_ready(r.proc, r.url, r.log, timeout=START_S * 2)
        yield started
    finally:
        for r in started:
            if r.proc.poll() is None:
                kill_tree(r.proc)


def _production_version(replica: Replica) -> str | None:
    from conftest import http

    status, _, body = http("GET", replica.url + "/v1/models", headers={"Authorization": f"Bearer {replica.key}"})
    if status != 200:
        return None
    return next((m.get("registry_version") for m in body["data"] if m["id"] == MODEL), None)


def _openai(replica: Replica):
    from openai import OpenAI

    return OpenAI(base_url=replica.url + "/v1", api_key=replica.key, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def served_v2(cluster, models, replicas, promoted, tiny_base, learned_rows):
    """Both replicas serve version 1; then a second version is gated and promoted over HTTP (the same Jobs'
    commands): returns when both serve version 2, with the seconds from the promote Job's end to each replica's swap."""
    from ftops import settings

    _, version = promoted
    for r in replicas:
        assert _production_version(r) == version, (r.name, r.log.read_text()[-3000:])
    mp = pytest.MonkeyPatch()
    try:  # a second run, logged over HTTP from this process (as a pod would): its adapter's bytes go to the bucket
        _mlflow(cluster, mp)
        mp.setenv("FTOPS_HOME", str(cluster.folder("test-process-home")))
        settings.configure_mlflow()
        run_id = log_adapter_run(tiny_base, learned_rows, **LEARNED_ADAPTER)
    finally:
        mp.undo()
        settings.configure_mlflow()  # this process's MLflow back on what the environment says
    gate_and_promote(cluster, models, run_id, "2")
    moved = time.monotonic()  # the promote Job has moved the alias
    took = {}
    while len(took) < len(replicas):
        for r in replicas:
            if r.name not in took and _production_version(r) == "2":
                took[r.name] = time.monotonic() - moved
        assert time.monotonic() - moved < SWAP_S, f"not swapped within {SWAP_S} s: {took}"
        time.sleep(0.5)
    (cluster.root / "swap-seconds.json").write_text(json.dumps(took))  # for a person reading the run afterwards
    return took


def _ledger_rows(cluster: Cluster) -> list[dict]:
    import psycopg2
    import psycopg2.extras

    url = cluster.secret["ftops-serve"]["ledger-url"]
    with (
        contextlib.closing(psycopg2.connect(url)) as connection,
        connection.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur,
    ):
        cur.execute("SELECT * FROM ftops_requests")
        return [dict(r) for r in cur.fetchall()]


def test_both_replicas_follow_the_alias_move_and_record_themselves(cluster, replicas, served_v2):
    for r in replicas:
        reply = _openai(r).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Ticket 1"}], max_tokens=4
        )
        assert reply.usage.completion_tokens > 0
    rows = _ledger_rows(cluster)
    mine = {(row["replica"], row["registry_version"]) for row in rows if row["adapter"] == MODEL}
    assert {(r.name, "2") for r in replicas} <= mine, mine
    assert {row["hardware"] for row in rows if row["replica"] in REPLICAS} == {"aws-g6.xlarge"}


def test_a_replica_killed_mid_load_loses_no_row_of_a_completed_request(cluster, replicas, served_v2):
    """Clients on both replicas; one replica is SIGKILLed (a lost node) after some answers: every answer a client
    got has its ledger row, with its tokens and its replica."""
    from concurrent.futures import ThreadPoolExecutor

    survivor, victim = replicas
    done: list[tuple[str, str, int, int]] = []  # (replica, response id, prompt tokens, completion tokens)
    failures: list[str] = []
    lock = threading.Lock()

    def client(r: Replica, i: int) -> None:
        c = _openai(r)
        for j in range(12):
            try:
                if (i + j) % 2:
                    reply = c.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": f"T{i}-{j}"}], max_tokens=24
                    )
                    got = (reply.id, reply.usage.prompt_tokens, reply.usage.completion_tokens)
                else:
                    stream = c.chat.completions.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": f"S{i}-{j}"}],
                        max_tokens=24,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                    chunks = list(stream)
                    usage = chunks[-1].usage
                    got = (chunks[0].id, usage.prompt_tokens, usage.completion_tokens)
            except Exception as e:  # the victim's clients: connection reset, refused
                with lock:
                    failures.append(f"{r.name}: {type(e).__name__}")
                if r is victim:
                    return
                raise
            with lock:
                done.append((r.name, *got))

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client, r, i) for i in range(4) for r in replicas]
        deadline = time.monotonic() + START_S
        while sum(1 for d in done if d[0] == victim.name) < 6:
            assert time.monotonic() < deadline and not any(f.done() and f.exception() for f in futures), failures
            time.sleep(0.05)
        kill_tree(victim.proc, signal.SIGKILL, wait=30)  # the whole pod at once: no drain, no goodbye
        for f in futures:
            f.result()
    assert victim.proc.poll() is not None
    assert any(name.startswith(victim.name) for name in failures), "the kill cut no request: it came too late"
    rows = {row["request_id"]: row for row in _ledger_rows(cluster)}
    lost = [d for d in done if d[1] not in rows]
    assert not lost, f"{len(lost)} completed requests have no ledger row: {lost[:5]}"
    for name, rid, prompt, completion in done:
        row = rows[rid]
        assert (row["replica"], row["status"], row["prompt_tokens"], row["completion_tokens"]) == (
            name,
            "ok",
            prompt,
            completion,
        )
    assert {d[0] for d in done} == set(REPLICAS)


def test_the_cost_report_over_both_replicas_charges_each_its_own_busy_time(cluster, replicas, served_v2):
    from ftops.costs.tables import load_hardware
    from ftops.costs.usage import busy_seconds

    rows = [r for r in _ledger_rows(cluster) if r["replica"] in REPLICAS]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftops.cli",
            "cost",
            "report",
            "--json",
            "--ledger",
            cluster.secret["ftops-serve"]["ledger-url"],
        ],
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert cluster.secret["ftops-postgres"]["password"] not in out.stdout + out.stderr
    by_replica = {e["replica"]: e for e in report["replicas"]}
    assert set(REPLICAS) <= set(by_replica)
    price = load_hardware().instance("aws-g6.xlarge").usd_per_hour
    for name in REPLICAS:
        own = [r for r in rows if r["replica"] == name]
        busy = _union([(_t(r) - r["latency_s"], _t(r)) for r in own])
        assert by_replica[name]["busy_s"] == pytest.approx(busy, rel=1e-6)
        assert by_replica[name]["self_hosted_usd"] == pytest.approx(price * busy / 3600, rel=1e-6)
    total = sum(e["self_hosted_usd"] for e in report["replicas"])
    assert report["total"]["self_hosted_usd"] == pytest.approx(total, rel=1e-9)
    # the replicas worked at the same time: one merged clock would charge less than the two machines cost
    merged = busy_seconds([(_t(r) - r["latency_s"], _t(r)) for r in rows])
    assert sum(by_replica[n]["busy_s"] for n in REPLICAS) > merged


def _t(row: dict) -> float:
    return row["ts"].replace(tzinfo=UTC).timestamp()  # naive UTC in the table


def _union(intervals: list[tuple[float, float]]) -> float:
    """The length of a union of intervals, computed here apart from costs/usage.py's."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total
