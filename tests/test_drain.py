"""Graceful drain (issue 14): a SIGTERM to ``ftops serve`` lets the requests in flight run to their end and get their
ledger rows, answers new requests 503 (OpenAI's error shape, ``Retry-After``, a ``refused`` row) and ``/readyz``
503 meanwhile, and the process then exits by itself.

One real service on the tiny base, spoken to through the real ``openai`` client. The stream in flight is read by a
client whose socket receive buffer is small and who stops reading after its first chunk: the server cannot finish
sending it (the kernel's buffers hold a small part of its bytes), so the request is in flight, whatever the speed
of the machine, until the client reads on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import kill_tree
from test_ledger_durable import wait_for
from test_serving import API_KEY, free_port, http, wait_ready

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BASE = "tiny-llama"
MAX_TOKENS = 1000  # with top_logprobs about 500 KB of events: far more than the socket buffers of a small-window client
MESSAGES = [{"role": "user", "content": "Tell a long story."}]


@pytest.fixture
def service(tiny_base, models_dir, tmp_path):
    """A real ``ftops serve`` on the tiny base (SQLite ledger under its home), for the test to SIGTERM; stopped here
    (SIGKILL of its process group) if the test left it running."""
    with _serving(models_dir, tmp_path / "home") as value:
        yield value


@pytest.fixture
def training_service(tiny_base, models_dir, tmp_path):
    """:func:`service` whose fine-tuning jobs train long (tests/test_jobs_api.py's ``TRAIN`` with 400 steps)."""
    from test_jobs_api import POLICY, TRAIN

    home = tmp_path / "home"
    home.mkdir()
    (home / "train.yaml").write_text(TRAIN.replace("max_steps: 2", "max_steps: 400"))
    (home / "policy.yaml").write_text(POLICY)
    jobs = f"jobs: {{train_config: {home / 'train.yaml'}, policy: {home / 'policy.yaml'}, poll_s: 0.5}}\n"
    with _serving(models_dir, home, jobs) as value:
        yield value


@contextlib.contextmanager
def _serving(models_dir: Path, home: Path, more_config: str = ""):
    home.mkdir(exist_ok=True)
    config = home / "serve.yaml"
    config.write_text(
        "# ftops serve --config serve.yaml (written by tests/test_drain.py)\n"
        f"base: {BASE}\nadapters: []\n"
        "engine: {max_model_len: 2048, dtype: bfloat16, max_num_seqs: 4}\n"
        "limits: {max_body_bytes: 65536, max_concurrency: 4, retry_after_s: 3}\n" + more_config
    )
    env = {
        **os.environ,
        "FTOPS_HOME": str(home),
        "FTOPS_MODELS": str(models_dir),
        "FTOPS_API_KEY": API_KEY,
        "BENTOML_HOME": str(home / "bentoml"),
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    port = free_port()
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftops.cli", "serve", "--config", str(config), "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, home / "server.log", timeout=1200)  # a guard against hangs on a loaded machine
        yield {"url": url, "proc": proc, "home": home, "log": home / "server.log"}
    finally:
        kill_tree(proc, signal.SIGKILL)  # the worker runs in a process group of its own: it and what it started
        log.close()


def slow_reader(url: str):
    """An ``openai`` client whose connections have a 4 KiB receive buffer (set before connect: no autotuning)."""
    import httpx
    from openai import OpenAI

    transport = httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
    return OpenAI(
        base_url=url + "/v1",
        api_key=API_KEY,
        max_retries=0,
        timeout=600,
        http_client=httpx.Client(transport=transport, timeout=600),
    )


def readyz(url: str):
    try:
        return http("GET", url + "/readyz")
    except OSError:  # not answering (today's main: the listener is closed at once)
        return None


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones_with_503(service):
    import openai
    from openai import OpenAI

    from ftops.serving.ledger import Ledger

    url, proc = service["url"], service["proc"]
    stream = slow_reader(url).chat.completions.create(
        model=BASE,
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
        logprobs=True,
        top_logprobs=5,
        extra_body={"ignore_eos": True},
    )
    chunks = iter(stream)
    first = next(chunks)
    stream_id = first.id

    os.kill(proc.pid, signal.SIGTERM)  # the service's main process, as an orchestrator sends it

    # the drain: /readyz 503 (a load balancer stops sending), new requests 503 with Retry-After in OpenAI's shape
    status, _, body = wait_for(lambda: (r := readyz(url)) and r[0] == 503 and r, "/readyz answering 503", timeout=60)
    assert body["ready"] is False and body["status"] == "draining", body
    assert proc.poll() is None, "the service exited with a stream in flight"
    late = OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    with pytest.raises(openai.InternalServerError) as refused:
        late.chat.completions.create(model=BASE, messages=MESSAGES, max_tokens=4)
    assert refused.value.status_code == 503
    assert refused.value.response.headers["retry-after"] == "3"
    error = refused.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "shutting_down", error
    refused_id = refused.value.response.headers["x-request-id"]

    # the stream in flight runs to its end, with every token
    received, usage = 0, None
    for chunk in [first, *chunks]:
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            received += len(chunk.choices[0].logprobs.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens == MAX_TOKENS == received, (usage, received)

    # then the process exits by itself (the wait guards against a hang; it is no speed check)
    proc.wait(timeout=300)
    log = service["log"].read_text(errors="replace")
    assert "draining" in log

    with Ledger(url=f"sqlite:///{service['home'] / 'ledger.db'}", create=False) as ledger:
        rows = ledger.rows()
    streamed = [r for r in rows if r["request_id"] == stream_id]
    late_rows = [r for r in rows if r["request_id"] == refused_id]
    assert len(streamed) == 1 and len(late_rows) == 1, rows
    assert streamed[0]["status"] == "ok" and streamed[0]["completion_tokens"] == MAX_TOKENS, streamed
    assert (late_rows[0]["status"], late_rows[0]["http_status"]) == ("refused", 503), late_rows
    assert late_rows[0]["error"].startswith("shutting_down") and late_rows[0]["completion_tokens"] == 0, late_rows


def test_sigterm_while_the_engine_is_paused_for_a_job_continues_it_and_exits(training_service):
    """``engine.pause_while_training``: a SIGTERM that finds the engine stopped (a fine-tuning job training on the
    host) continues it, so that the engine core can finish and exit; nothing is left behind, stopped or not."""
    import io

    from openai import OpenAI
    from test_jobs_api import _jsonl, _rows

    url, proc = training_service["url"], training_service["proc"]
    client = OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    file = client.files.create(file=("tickets.jsonl", io.BytesIO(_jsonl(_rows(200)))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=file.id, model=BASE)
    wait_for(lambda: (r := readyz(url)) and r[2].get("engine", {}).get("paused"), "the engine paused", timeout=600)
    family = psutil.Process(proc.pid).children(recursive=True)
    engine = [p for p in family if p.name().startswith("VLLM::")]
    assert engine and {p.status() for p in engine} == {psutil.STATUS_STOPPED}
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"

    os.kill(proc.pid, signal.SIGTERM)  # the service's main process, as an orchestrator sends it
    proc.wait(timeout=300)  # a guard against a hang (a stopped engine core never exits); no speed check
    _, left = psutil.wait_procs(family, timeout=60)
    assert not left, [(p.pid, p.name()) for p in left]
    log = training_service["log"].read_text(errors="replace")
    assert "engine paused: a fine-tuning job trains on this host" in log
    assert "engine continued: SIGTERM" in log
