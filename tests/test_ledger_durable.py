"""The ledger loses nothing, and secrets never leave (issue 14).

- ``redact`` masks URL passwords and secret environment values; the CLI's error line and the service's bodies and
  log carry none (``ftops cost report`` on an unreachable PostgreSQL URL with a password; the service below).
- On a real PostgreSQL (a throwaway cluster, stopped and started again): rows the database cannot take go to the
  local spool (fsync'd JSON lines) and are written, once each, when it is back; a spool that cannot be written either
  counts a lost row and says so.
- The real service over HTTP (one, on the tiny base, its ledger on that PostgreSQL with a password in the URL): every
  inference request gets a row, refused ones included (503 while loading, 401, 400, 404, 405, 413, 429: status,
  reason, zero tokens, key id); a stream that errors is ``failed`` with its error; rows made while PostgreSQL is down
  are spooled (``/metrics`` counts them) and written once each when it is back.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import API_KEY, free_port, http, start_service, wait_ready
from test_cost_postgres import PG_BIN, _as_postgres

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "S3cret-pw"
BASE = "tiny-llama"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


class Postgres:
    """A throwaway PostgreSQL cluster (trust auth: the password in the URL is accepted and ignored) that a test can
    stop and start again."""

    def __init__(self) -> None:
        # not under pytest's tmp folder: as root that one is private (0700) and the postgres user could not enter it
        self.root = Path(tempfile.mkdtemp(prefix="ftops-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self.data, self.port = self.root / "data", free_port()
        self.url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/postgres"
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.start()

    def _run(self, *argv: str) -> None:
        proc = subprocess.run(_as_postgres(list(argv)), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {proc.stderr or proc.stdout}")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -h 127.0.0.1"
        log = str(self.root / "pg.log")
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", log, "-w", "-o", opts, "start")

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg():
    pytest.importorskip("psycopg2", reason="PostgreSQL driver not installed (pip install psycopg2-binary)")
    if PG_BIN is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        pytest.skip("running as root without runuser: cannot start PostgreSQL")
    server = Postgres()
    try:
        yield server
    finally:
        server.remove()


def counter(name: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name) or 0.0


def row_args(request_id: str, **kw) -> dict:
    return {
        "request_id": request_id,
        "api_key_id": "k",
        "model": "smollm2",
        "adapter": None,
        "registry_version": None,
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "latency_s": 0.2,
        "ttft_s": 0.05,
        "status": "ok",
        **kw,
    }


def wait_for(condition, what: str, timeout: float = 120):
    """Poll ``condition`` until it returns something truthy (the timeout guards against hangs; it is no speed check)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.5)
    return value


# --------------------------------------------------------------------------------------------- secrets
def test_redact_masks_url_passwords_and_secret_env_values(monkeypatch):
    from ftops.redact import redact

    monkeypatch.setenv("FTOPS_API_KEY", "sk-live-0123456789")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    text = (
        f"ledger 'postgresql://ftops:{PASSWORD}@db:5432/x' and s3://AKIA:p@ss@bucket/key, "
        "key sk-live-0123456789, aws wJalrXUtnFEMI/K7MDENG, plain http://host:80/path and postgresql://u@h/db"
    )
    out = redact(text)
    assert PASSWORD not in out and "p@ss" not in out and "sk-live" not in out and "wJalr" not in out
    assert "postgresql://ftops:***@db:5432/x" in out and "s3://AKIA:***@bucket/key" in out
    assert "http://host:80/path" in out and "postgresql://u@h/db" in out  # no password: unchanged


def test_cost_report_on_unreachable_postgres_never_shows_the_password(ftops_home):
    pytest.importorskip("psycopg2", reason="PostgreSQL driver not installed (pip install psycopg2-binary)")
    url = f"postgresql://ftops:{PASSWORD}@127.0.0.1:{closed_port()}/x"
    proc = subprocess.run(
        [sys.executable, "-m", "ftops.cli", "cost", "report", "--ledger", url],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "cannot open the database" in proc.stderr and "postgresql://ftops:***@127.0.0.1" in proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------- the spool
def test_rows_spool_while_postgres_is_down_and_are_written_once_when_it_is_back(pg, ftops_home):
    from ftops.errors import FtopsError
    from ftops.serving.ledger import UNRECORDED_REPLICA, Ledger

    spooled, failed = counter("ftops_ledger_spooled_rows_total"), counter("ftops_ledger_failed_rows_total")
    ledger = Ledger(pg.url)
    first = ledger.record(**row_args("spool-a"))
    assert first["id"] is not None
    pg.stop()
    try:
        down = [ledger.record(**row_args(f"spool-{c}", status=s)) for c, s in (("b", "ok"), ("c", "cancelled"))]
        # a client that sends one X-Request-Id twice (its own retry) made two requests: two rows, not one
        down += [ledger.record(**row_args("spool-twice")) for _ in range(2)]
        assert [r["id"] for r in down] == [None] * 4  # spooled, not lost
        from ftops.serving.ledger import Spool, spool_path

        spool = spool_path(pg.url)
        lines = [json.loads(line) for line in spool.read_text().splitlines()]
        assert [r["request_id"] for r in lines] == ["spool-b", "spool-c", "spool-twice", "spool-twice"]
        assert counter("ftops_ledger_spooled_rows_total") == spooled + 4
        # a replay interrupted after its commit leaves a row that is already in the database: written only once,
        # by its row id, and by its request id when an older ftops spooled it without one
        Spool(spool).append(first)
        Spool(spool).append({k: v for k, v in first.items() if k != "row_id"})
        # neither the database nor the spool can take a row: it is counted lost, and the caller is told
        hold = spool.with_suffix(".held")
        spool.rename(hold)
        spool.mkdir()
        with pytest.raises(FtopsError, match="lost"):
            ledger.record(**row_args("spool-lost"))
        assert counter("ftops_ledger_failed_rows_total") == failed + 1
        spool.rmdir()
        hold.rename(spool)
    finally:
        pg.start()
    with Ledger(pg.url, create=False) as reader:  # the retry thread writes the spool back on its own
        wait_for(lambda: len(reader.rows()) == 5, "the spooled rows written back")
        assert ledger.record(**row_args("spool-d"))["id"] is not None
        assert ledger.flush() == 0
        rows = reader.rows()
    ledger.close()
    assert sorted(r["request_id"] for r in rows) == [
        "spool-a",
        "spool-b",
        "spool-c",
        "spool-d",
        "spool-twice",
        "spool-twice",
    ]
    assert {r["request_id"]: r["status"] for r in rows}["spool-c"] == "cancelled"
    # the spooled rows keep the replica that served them and its hardware (issue 13)
    assert {(r["replica"], r["hardware"]) for r in rows} == {(ledger.replica, ledger.hardware_profile)}
    assert ledger.replica not in {"", UNRECORDED_REPLICA} and ledger.hardware_profile == ledger.hardware.default
    assert spool_path(pg.url).read_text() == ""


# --------------------------------------------------------------------------------------------- the service
@pytest.fixture(scope="module")
def service(pg, tiny_base, models_dir, tmp_path_factory):
    """The real service on the tiny base (no adapter, no admin key), its ledger on ``pg`` with a password in the URL,
    at most one request in flight. Yields its URL, home, log path and the first answer it gave while the engine
    loaded."""
    service = start_service(
        tmp_path_factory.mktemp("durable-home"),
        models_dir,
        written_by="tests/test_ledger_durable.py",
        base=BASE,
        ledger_url=pg.url,
        engine={"max_model_len": 2048, "dtype": "bfloat16", "max_num_seqs": 4},
        limits={"max_body_bytes": 65536, "max_concurrency": 1, "retry_after_s": 2},
        admin_key=None,
    )
    try:
        loading = wait_for(lambda: _first_answer(service.proc, service.url), "the first HTTP answer", timeout=600)
        wait_ready(service.proc, service.url, service.log)
        yield {"url": service.url, "home": service.home, "log": service.log, "loading": loading}
    finally:
        service.stop()


def _first_answer(proc: subprocess.Popen, url: str):
    assert proc.poll() is None, f"service exited {proc.returncode}"
    try:
        return post(url, {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    except OSError:
        return None


def post(url: str, payload: object, path: str = "/v1/chat/completions", key: str | None = API_KEY, raw=None):
    """(status, headers, body bytes) of a POST."""
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url + path, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def rows_holding(pg, request_ids) -> dict[str, dict] | None:
    """The ledger's rows by request id once it holds every one of ``request_ids``, else None."""
    from ftops.serving.ledger import Ledger

    with Ledger(pg.url, create=False) as ledger:
        rows = {r["request_id"]: r for r in ledger.rows()}
    return rows if set(request_ids) <= set(rows) else None


@pytest.mark.slow
def test_every_request_gets_a_row_refused_failed_and_spooled(service, pg):
    from openai import OpenAI

    url, bodies = service["url"], []
    chat = {"model": BASE, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 4}

    # the engine was still loading: 503, and a row
    status, headers, body = service["loading"]
    bodies.append(body)
    assert status == 503, body
    refused = {headers["x-request-id"]: (503, "default", "not_ready")}

    def refuse(expect: int, code: str, key_id: str | None, **kw) -> None:
        status, headers, body = post(url, **kw)
        bodies.append(body)
        assert status == expect and json.loads(body)["error"]["code"] == code, (status, body)
        refused[headers["x-request-id"]] = (expect, key_id, code)

    refuse(401, "invalid_api_key", None, payload=chat, key="wrong-key")
    refuse(401, "invalid_api_key", None, payload=chat, key=None)
    refuse(400, "invalid_json", "default", payload=None, raw=b'{"model": "tiny-llama", "messages": [')
    refuse(404, "model_not_found", "default", payload={**chat, "model": "no-such-model"})
    huge = {**chat, "messages": [{"role": "user", "content": "x" * 70_000}]}
    refuse(413, "request_too_large", "default", payload=huge)
    req = urllib.request.Request(url + "/v1/completions", headers={"Authorization": f"Bearer {API_KEY}"})
    try:
        urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as e:
        bodies.append(e.read())
        assert e.code == 405
        refused[e.headers["x-request-id"]] = (405, "default", "method_not_allowed")
    # one request in flight (max_concurrency 1): a long stream holds the slot while another one is refused with 429
    client = OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
    stream = client.chat.completions.create(
        model=BASE, messages=chat["messages"], max_tokens=1900, stream=True, extra_body={"ignore_eos": True}
    )
    next(iter(stream))
    refuse(429, "rate_limit_exceeded", "default", payload=chat)
    stream.close()

    # a stream that errors (vLLM validates logprobs only once the stream has started), then ends with [DONE]
    wait_for(lambda: post(url, chat)[0] == 200, "the slot freed")  # the cancelled stream has left the engine
    status, _, body = post(
        url,
        {"model": BASE, "prompt": "Hi", "max_tokens": 4, "stream": True, "logprobs": 100_000},
        path="/v1/completions",
    )
    bodies.append(body)
    assert status == 200 and b'"error"' in body and body.rstrip().endswith(b"data: [DONE]"), body

    rows = wait_for(lambda: rows_holding(pg, refused), "the refused rows")
    for request_id, (http_status, key_id, code) in refused.items():
        row = rows[request_id]
        assert (row["status"], row["http_status"], row["api_key_id"]) == ("refused", http_status, key_id), row
        assert row["error"].startswith(code) and (row["prompt_tokens"], row["completion_tokens"]) == (0, 0), row
    failed = [r for r in rows.values() if r["status"] == "failed"]
    assert len(failed) == 1 and "logprobs" in failed[0]["error"] and failed[0]["http_status"] == 200, failed

    # PostgreSQL goes away: the answers still go out, their rows are spooled (counted on /metrics), and written once
    # each when it is back
    pg.stop()
    try:
        answered = []
        for _ in range(2):
            status, _, body = post(url, chat)
            bodies.append(body)
            assert status == 200, body
            answered.append(json.loads(body)["id"])
        refuse(400, "missing_model", "default", payload={"messages": chat["messages"]})
        answered.append(list(refused)[-1])
        metrics = wait_for(lambda: _metric(url, "ftops_ledger_spooled_rows_total") >= 3, "3 spooled rows")
        assert metrics
    finally:
        pg.start()
    rows = wait_for(lambda: rows_holding(pg, answered), "the spooled rows")
    from ftops.serving.ledger import Ledger

    with Ledger(pg.url, create=False) as ledger:
        # this service's rows (the spool test above, on the same database, sent one id twice on purpose: two rows)
        ids = [r["request_id"] for r in ledger.rows() if not r["request_id"].startswith("spool-")]
    assert len(ids) == len(set(ids))  # exactly once
    assert [rows[i]["status"] for i in answered] == ["ok", "ok", "refused"]

    # secrets: the ledger URL's password is in no response body and nowhere in the server's output
    assert not [b for b in bodies if PASSWORD.encode() in b]
    assert PASSWORD not in service["log"].read_text(errors="replace")
    assert "postgresql://postgres:***@" in service["log"].read_text(errors="replace")  # the outage was logged


def _metric(url: str, name: str) -> float:
    status, _, body = http("GET", url + "/metrics", None, {"Authorization": f"Bearer {API_KEY}"})
    assert status == 200
    for line in body["raw"].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
