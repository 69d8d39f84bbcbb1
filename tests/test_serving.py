"""Integration tests of the serving stage: ONE real service (``ftops serve`` -> BentoML -> a real vLLM engine on the
tiny base; conftest.py's ``tiny_chat_service``, shared by the modules that import ``served``), two real adapter
versions registered in real MLflow (temporary SQLite store), spoken to only through the real ``openai`` client (plus
raw HTTP where the client cannot produce the bad input: malformed JSON, oversize body, missing key)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from conftest import (  # noqa: F401  (free_port, make_adapter, register_version, wait_ready: imported from here too)
    ADMIN_KEY,
    API_KEY,
    TINY_CHAT,
    free_port,
    http,
    make_adapter,
    register_version,
    service_env,
    wait_ready,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MODEL = TINY_CHAT
PROMPT = [{"role": "user", "content": "Say something about tickets."}]


@pytest.fixture(scope="module")
def served(tiny_chat_service, models_dir):
    """The running service (conftest.py's ``tiny_chat_service``, shared): yields ``{url, v1, v2, home, log}``,
    adapter ``tiny-chat`` v1 at production, v2 registered, base tiny-llama. While a module uses it, this process's
    MLflow client points at the service's registry (``FTOPS_HOME``)."""
    from ftops import settings

    with service_env(tiny_chat_service["home"], models_dir):
        # MLflow keeps the last store a module configured in this process; the env alone does not move it back
        settings.configure_mlflow()
        yield tiny_chat_service


@pytest.fixture(scope="module")
def client(served):
    from openai import OpenAI

    return OpenAI(base_url=served["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def chat(client, model: str, max_tokens: int = 8, **kw):
    return client.chat.completions.create(model=model, messages=PROMPT, max_tokens=max_tokens, temperature=0, **kw)


def test_health_is_open_and_models_list_base_and_adapters(served, client):
    assert http("GET", served["url"] + "/livez")[0] == 200
    assert http("GET", served["url"] + "/readyz")[0] == 200
    models = {m.id: m for m in client.models.list().data}
    assert "tiny-llama" in models
    assert models[MODEL].parent == "tiny-llama"
    assert models[MODEL].model_extra["registry_version"] == served["v1"]
    assert models[f"{MODEL}:{served['v1']}"].parent == "tiny-llama"


def test_chat_base_and_adapter_answer_differently_with_usage(client, served):
    base = chat(client, "tiny-llama")
    adapted = chat(client, MODEL)
    assert adapted.model == f"{MODEL}:{served['v1']}"
    assert base.choices[0].message.content != adapted.choices[0].message.content
    for r in (base, adapted):
        assert r.usage.completion_tokens == 8 and r.usage.prompt_tokens > 5
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completions_endpoint(client):
    r = client.completions.create(model=MODEL, prompt="Ticket 42:", max_tokens=5, temperature=0)
    assert r.usage.completion_tokens == 5 and r.choices[0].text


def test_stream_matches_non_stream_and_hides_usage_unless_asked(client):
    whole = chat(client, MODEL, max_tokens=10).choices[0].message.content
    chunks = list(chat(client, MODEL, max_tokens=10, stream=True))
    assert all(c.choices for c in chunks), "a usage-only chunk reached a client that did not ask for it"
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    with_usage = list(chat(client, MODEL, max_tokens=10, stream=True, stream_options={"include_usage": True}))
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens == 10


def test_pinned_version_is_served(client, served):
    v2 = chat(client, f"{MODEL}:{served['v2']}", max_tokens=10)
    v1 = chat(client, f"{MODEL}:{served['v1']}", max_tokens=10)
    assert v2.model == f"{MODEL}:{served['v2']}"
    assert v1.choices[0].message.content != v2.choices[0].message.content


def test_errors_have_openai_shape_and_status(client, served):
    import openai

    with pytest.raises(openai.NotFoundError) as e:
        chat(client, "no-such-model")
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        chat(client, f"{MODEL}:999")
    with pytest.raises(openai.NotFoundError):
        chat(client, "../../etc/passwd:1")
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, MODEL, max_tokens=100_000)
    assert set(e.value.body) >= {"message", "type", "param", "code"}
    from openai import OpenAI

    with pytest.raises(openai.AuthenticationError):
        chat(OpenAI(base_url=served["url"] + "/v1", api_key="wrong-key", max_retries=0), MODEL)
    url = served["url"] + "/v1/chat/completions"
    auth = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    status, _, body = http("POST", url, b'{"model": "tiny-chat", "messages": [', auth)
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, _, body = http(
        "POST",
        url,
        json.dumps({"model": MODEL, "messages": PROMPT}).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 401 and body["error"]["type"] == "invalid_request_error"
    huge = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 70_000}]}).encode()
    status, _, body = http("POST", url, huge, auth)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    status, _, body = http("POST", url, json.dumps({"model": MODEL, "messages": "not a list"}).encode(), auth)
    assert status == 400 and "error" in body
    status, _, body = http("GET", served["url"] + "/v1/nothing-here", None, auth)
    assert status == 404 and "error" in body
    assert http("GET", served["url"] + "/metrics")[0] == 401


def test_over_the_concurrency_limit_answers_429_with_retry_after(served):
    from concurrent.futures import ThreadPoolExecutor

    import openai
    from openai import OpenAI

    c = OpenAI(base_url=served["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=120)

    def one(_):
        try:
            chat(c, MODEL, max_tokens=200)
            return "ok", None
        except openai.RateLimitError as e:
            return "429", e.response.headers.get("retry-after")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    limited = [r for r in results if r[0] == "429"]
    assert limited and all(r[1] == "2" for r in limited)
    assert any(r[0] == "ok" for r in results)


def test_metrics_expose_per_adapter_series(served, client):
    chat(client, MODEL)
    status, _, body = http("GET", served["url"] + "/metrics", None, {"Authorization": f"Bearer {API_KEY}"})
    text = body["raw"].decode()
    assert status == 200
    assert f'adapter="{MODEL}"' in text
    for series in ("ftops_requests_total", "ftops_tokens_total", "ftops_request_latency_seconds_bucket"):
        assert series in text, series


def test_metrics_port_answers_prometheus_without_a_key_and_nothing_else(served, client):
    """``metrics_port``: the scrape needs no key there; the API port's /metrics still does; nothing else is served on
    the metrics port."""
    chat(client, MODEL)
    status, headers, body = http("GET", served["metrics_url"] + "/metrics")
    text = body["raw"].decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert f'adapter="{MODEL}"' in text and "ftops_requests_total" in text
    assert "vllm:" in text  # the engine's own series (queue, KV cache) beside ftops's
    assert http("GET", served["metrics_url"] + "/v1/models")[0] == 404
    assert http("POST", served["metrics_url"] + "/metrics", b"{}")[0] == 405
    assert http("GET", served["url"] + "/metrics")[0] == 401


def test_hot_swap_under_load_then_rollback(served, client):
    """A client sends requests without pause while the alias moves v1 -> v2 and back: 0 failed requests, the new
    version served within 10 s of each move."""
    from mlflow import MlflowClient

    seen: list[tuple[float, str]] = []
    failures: list[str] = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                seen.append((time.monotonic(), chat(client, MODEL, max_tokens=4).model))
            except Exception as e:  # any failure is a test failure
                failures.append(repr(e))

    thread = threading.Thread(target=hammer)
    thread.start()
    registry = MlflowClient()
    try:
        for target in (served["v2"], served["v1"]):
            time.sleep(1)
            moved = time.monotonic()
            registry.set_registered_model_alias(MODEL, "production", target)
            deadline = moved + 10
            while time.monotonic() < deadline and not any(t > moved and m == f"{MODEL}:{target}" for t, m in seen):
                time.sleep(0.2)
            switched = [t for t, m in seen if t > moved and m == f"{MODEL}:{target}"]
            assert switched, f"version {target} not served within 10 s"
            print(f"alias -> {target}: served after {switched[0] - moved:.1f} s")
        # the load goes on until it has sent more than 10 requests: a loaded machine answers fewer during the moves
        # (9 once); the deadline is a give-up point, not a speed check
        deadline = time.monotonic() + 120
        while len(seen) <= 10 and not failures and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert len(seen) > 10


def test_usage_report_needs_admin_key(served):
    status, _, body = http("GET", served["url"] + "/v1/usage", None, {"Authorization": f"Bearer {API_KEY}"})
    assert status == 403 and "error" in body
    status, _, body = http("GET", served["url"] + "/v1/usage", None, {"Authorization": f"Bearer {ADMIN_KEY}"})
    assert status == 200 and "error" not in body


def ledger_row(served, request_id: str, timeout: float = 10) -> dict:
    from ftops.serving.ledger import Ledger

    deadline = time.monotonic() + timeout
    with Ledger(url=f"sqlite:///{served['home'] / 'ledger.db'}") as ledger:
        while True:
            rows = [r for r in ledger.rows() if r["request_id"] == request_id]
            if rows or time.monotonic() > deadline:
                assert rows, f"no ledger row for {request_id}"
                return rows[0]
            time.sleep(0.2)


def test_ledger_records_the_usage_the_client_got_also_for_cancelled_streams(served, client):
    r = chat(client, MODEL, max_tokens=6)
    row = ledger_row(served, r.id)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        r.usage.prompt_tokens,
        r.usage.completion_tokens,
    )
    assert row["status"] == "ok" and row["adapter"] == MODEL and row["api_key_id"] == "default"
    assert row["registry_version"] == r.model.split(":")[1] and row["model"] == "tiny-llama"

    # long enough that the tiny model cannot finish before the server sees the client leave (with 400 tokens it
    # sometimes did, and the ledger rightly said "ok")
    stream = chat(client, MODEL, max_tokens=1900, stream=True, extra_body={"ignore_eos": True})
    for i, chunk in enumerate(stream):
        request_id = chunk.id
        if i == 2:
            break
    stream.close()
    row = ledger_row(served, request_id, timeout=120)
    assert row["status"] == "cancelled" and 0 < row["completion_tokens"] < 1900
