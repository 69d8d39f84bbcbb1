"""OpenAI's fine-tuning API, self-hosted, driven by the real ``openai`` client over HTTP.

The app (``ftops.jobs.api``) runs under uvicorn behind the service's own API key middleware
(``ftops.api_keys.ApiKeyMiddleware``, as ``ftops serve`` composes them), with the real local executor:
``ftops train`` on the tiny base and ``ftops gate`` as child processes, MLflow on a temporary SQLite store. What this
file does not start is the vLLM engine: the jobs API needs none (chatting with the result is the service's part).
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from pathlib import Path

import pytest

KEY_A = "sk-alice-0123456789abcdef"
KEY_B = "sk-bob-0123456789abcdef01"
ADMIN = "sk-admin-0123456789abcdef"
POLICY = "name: jobs-test\nrules:\n  - {metric: accuracy, min: 0.0}\n"
TRAIN = """\
base: tiny-llama
data: {train: a.jsonl, validation: b.jsonl, test: c.jsonl}
method: lora
lora: {r: 8, alpha: 16, target_modules: [q_proj, v_proj]}
max_steps: 2
batch_size: 4
max_seq_length: 256
eval_steps: 2
save_steps: 1
logging_steps: 1
learning_rate: 1.0e-3
gradient_checkpointing: false
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(n: int) -> list[dict]:
    from ftops.expectations.demo_data import generate_tickets

    return generate_tickets(n, seed=3)


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


class Server:
    """The jobs app + executor on a free port; ``restart()`` stops both and starts new ones on the same store."""

    def __init__(self, home: Path, train_config: Path, policy: Path, max_steps_env: dict | None = None) -> None:
        self.home, self.train_config, self.policy = home, train_config, policy
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.start()

    def start(self) -> None:
        import uvicorn

        from ftops.api_keys import ApiKeyMiddleware
        from ftops.base import list_bases
        from ftops.jobs.api import JobsApiSettings, build_app
        from ftops.jobs.runner import LocalExecutor, RunnerSettings
        from ftops.jobs.store import JobStore

        self.store = JobStore()
        app = build_app(self.store, JobsApiSettings(max_upload_bytes=200_000), lambda: [b.name for b in list_bases()])
        keys = {"alice": KEY_A, "bob": KEY_B, "admin": ADMIN}
        self.executor = LocalExecutor(
            self.store,
            RunnerSettings(
                train_config=self.train_config,
                policy=self.policy,
                learning_rate=1e-3,
                poll_s=0.5,
                gate_options=["--engine", "transformers", "--max-new-tokens", "4", "--no-regression"],
            ),
        )
        self.executor.start()
        config = uvicorn.Config(ApiKeyMiddleware(app, keys=lambda: keys), port=self.port, log_level="warning")
        self.uvicorn = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uvicorn.started and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self.executor.stop()
        self.uvicorn.should_exit = True
        self.thread.join(10)
        self.store.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self, key: str = KEY_A):
        from openai import OpenAI

        return OpenAI(base_url=self.url, api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def server(tiny_base, models_dir, tmp_path_factory):
    import os

    home = tmp_path_factory.mktemp("jobs-home")
    saved = {k: os.environ.get(k) for k in ("FTOPS_HOME", "FTOPS_MODELS", "MLFLOW_TRACKING_URI")}
    os.environ["FTOPS_HOME"] = str(home)
    os.environ["FTOPS_MODELS"] = str(models_dir)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    (home / "train.yaml").parent.mkdir(parents=True, exist_ok=True)
    (home / "train.yaml").write_text(TRAIN)
    (home / "policy.yaml").write_text(POLICY)
    srv = Server(home, home / "train.yaml", home / "policy.yaml")
    yield srv
    srv.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _upload(client, data: bytes, name: str = "tickets.jsonl"):
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")


def _wait(client, job_id: str, statuses: tuple[str, ...], timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(1)
    events = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=50).data]
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s; events: {events}")


def _error(call) -> tuple[int, dict]:
    import openai

    with pytest.raises(openai.APIStatusError) as e:
        call()
    return e.value.status_code, e.value.body


# --------------------------------------------------------------------------------------------- bad input
def test_files_bad_input_gets_openai_errors_and_stores_nothing(server):
    client = server.client()
    before = len(client.files.list().data)
    status, body = _error(lambda: client.files.create(file=("a.jsonl", io.BytesIO(b'{"a":1}\n')), purpose="batch"))
    assert status == 400 and body["param"] == "purpose"
    status, body = _error(lambda: _upload(client, b"\x89PNG\r\n\x1a\n\x00\x00binary"))
    assert status == 400 and body["code"] == "invalid_file_format" and "UTF-8" in body["message"]
    status, body = _error(lambda: _upload(client, b"name,age\nbob,3\n", "people.csv"))
    assert status == 400 and "line 1 is not JSON" in body["message"]
    status, body = _error(lambda: _upload(client, b'{"messages": []}\n' * 20_000))
    assert status == 413 and body["code"] == "file_too_large"
    status, _ = _error(lambda: client.files.retrieve("file-doesnotexist"))
    assert status == 404
    assert len(client.files.list().data) == before


def test_jobs_bad_input_gets_openai_errors(server):
    client = server.client()
    file = _upload(client, _jsonl(_rows(100)))
    status, body = _error(lambda: client.fine_tuning.jobs.create(training_file=file.id, model="gpt-4o-mini"))
    assert status == 404 and body["code"] == "model_not_found" and "tiny-llama" in body["message"]
    status, body = _error(lambda: client.fine_tuning.jobs.create(training_file="file-nope", model="tiny-llama"))
    assert status == 404 and body["param"] == "training_file"
    status, body = _error(
        lambda: client.fine_tuning.jobs.create(
            training_file=file.id, model="tiny-llama", hyperparameters={"n_epochs": 0}
        )
    )
    assert status == 400 and body["param"] == "hyperparameters.n_epochs"
    status, body = _error(
        lambda: client.fine_tuning.jobs.create(
            training_file=file.id, model="tiny-llama", hyperparameters={"learning_rate_multiplier": "fast"}
        )
    )
    assert status == 400 and body["param"].startswith("hyperparameters.learning_rate_multiplier")
    status, body = _error(
        lambda: client.fine_tuning.jobs.create(training_file=file.id, model="tiny-llama", extra_body={"nope": 1})
    )
    assert status == 400 and body["param"] == "nope"
    status, body = _error(
        lambda: client.fine_tuning.jobs.create(training_file=file.id, model="tiny-llama", suffix="../../etc")
    )
    assert status == 400 and body["param"] == "suffix"
    status, body = _error(lambda: client.fine_tuning.jobs.list(limit=1000))
    assert status == 400 and body["param"] == "limit"
    # another key sees none of alice's files
    status, _ = _error(lambda: server.client(KEY_B).files.retrieve(file.id))
    assert status == 404
    status, _ = _error(lambda: server.client(KEY_B).fine_tuning.jobs.create(training_file=file.id, model="tiny-llama"))
    assert status == 404
    assert client.fine_tuning.jobs.list().data == []  # nothing half-created


def test_no_key_is_401(server):
    import openai

    with pytest.raises(openai.AuthenticationError):
        server.client("sk-wrong-key-0123456789").files.list()


# --------------------------------------------------------------------------------------------- the path
@pytest.mark.slow
def test_the_guides_code_runs_upload_create_poll_succeeded(server):
    """``client.files.create`` -> ``client.fine_tuning.jobs.create`` -> poll -> ``fine_tuned_model``."""
    import mlflow

    client = server.client()
    file = client.files.create(file=("tickets.jsonl", io.BytesIO(_jsonl(_rows(200)))), purpose="fine-tune")
    assert file.purpose == "fine-tune" and file.bytes > 0
    assert client.files.content(file.id).read() == _jsonl(_rows(200))
    job = client.fine_tuning.jobs.create(
        training_file=file.id,
        model="tiny-llama",
        hyperparameters={"batch_size": 4},
        suffix="tickets",
        seed=7,
        metadata={"team": "support"},
    )
    assert job.status == "validating_files" and job.hyperparameters.batch_size == 4 and job.seed == 7
    done = _wait(client, job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == "tiny-llama-tickets:1"
    assert done.finished_at >= done.created_at and done.trained_tokens and done.trained_tokens > 0
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    messages = [e.message for e in events]
    assert any("held out" in m for m in messages) and any("Gate verdict: pass" in m for m in messages)
    metrics = [e for e in events if e.type == "metrics"]
    assert {e.data["step"] for e in metrics} == {1, 2} and all("train_loss" in e.data for e in metrics)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [2, 1]
    assert checkpoints[0].fine_tuned_model_checkpoint == "tiny-llama-tickets:ckpt-step-2"
    assert checkpoints[0].metrics.train_loss is not None
    # the registry holds the gated version at @staging, tagged with the job
    from ftops import settings

    settings.configure_mlflow()
    version = mlflow.MlflowClient().get_model_version_by_alias("tiny-llama-tickets", "staging")
    assert str(version.version) == "1" and version.tags["ftops.gate.verdict"] == "pass"
    run = mlflow.MlflowClient().get_run(version.run_id)
    assert run.data.tags["ftops.job_id"] == job.id
    # listed, and invisible to another key; cancelling a finished job is a 400
    assert job.id in [j.id for j in client.fine_tuning.jobs.list().data]
    assert _error(lambda: server.client(KEY_B).fine_tuning.jobs.retrieve(job.id))[0] == 404
    assert job.id in [j.id for j in server.client(ADMIN).fine_tuning.jobs.list().data]
    status, body = _error(lambda: client.fine_tuning.jobs.cancel(job.id))
    assert status == 400 and "succeeded" in body["message"]


@pytest.mark.slow
def test_an_invalid_file_fails_the_job_naming_the_line(server):
    client = server.client()
    rows = _jsonl(_rows(100)).decode().splitlines()
    rows[6] = json.dumps({"messages": [{"role": "user", "content": "hi"}]})  # no assistant answer
    file = _upload(client, ("\n".join(rows) + "\n").encode())
    job = client.fine_tuning.jobs.create(training_file=file.id, model="tiny-llama")
    done = _wait(client, job.id, ("failed", "succeeded"), timeout=120)
    assert done.status == "failed" and done.error.param == "training_file"
    assert done.error.code == "invalid_training_file" and "line 7" in done.error.message


@pytest.mark.slow
def test_cancel_stops_a_running_job_and_a_restart_loses_nothing(server):
    client = server.client()
    file = _upload(client, _jsonl(_rows(200)))
    slow = client.fine_tuning.jobs.create(
        training_file=file.id, model="tiny-llama", suffix="slow", hyperparameters={"n_epochs": 3}
    )
    queued = client.fine_tuning.jobs.create(training_file=file.id, model="tiny-llama", suffix="after")
    running = _wait(client, slow.id, ("running",), timeout=180)
    # the service restarts with one job running and one queued
    server.restart()
    client = server.client()
    assert client.fine_tuning.jobs.retrieve(queued.id).status in ("queued", "validating_files", "running")
    resumed = _wait(client, slow.id, ("running",), timeout=180)
    assert resumed.id == running.id
    child = server.executor._child  # the `ftops train` process of the resumed job
    assert child is not None and child.poll() is None
    cancelled = client.fine_tuning.jobs.cancel(slow.id)
    assert cancelled.status in ("running", "cancelled")
    t0 = time.monotonic()
    done = _wait(client, slow.id, ("cancelled",), timeout=60)
    assert done.status == "cancelled" and done.fine_tuned_model is None
    print(f"cancelled within {time.monotonic() - t0:.1f} s")
    assert child.poll() is not None  # its process is gone: the machine is free for the next job
    after = _wait(client, queued.id, ("succeeded", "failed"))
    assert after.status == "succeeded", after.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(slow.id, limit=100).data]
    assert any("re-queued" in m for m in messages) and any("cancelled" in m for m in messages)
