"""The ledger against the REAL service: ``ftops serve`` -> BentoML -> a real vLLM engine on the tiny base, spoken to
with the real ``openai`` client from 16 concurrent threads (streaming, not streaming, cancelled mid-stream).

Reuses tests/test_serving.py's helpers (adapter, registration, ports, raw HTTP); the service is started here with a
concurrency limit above 16 so that no request is refused with 429 (a refused request would be a `refused` row).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import (
    ADMIN_KEY,
    API_KEY,
    http,
    make_adapter,
    register_version,
    running_service,
    service_env,
    start_service,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ADAPTER = "load-chat"
BASE = "tiny-llama"
N_REQUESTS, N_CLIENTS = 200, 16
PROMPT = [{"role": "user", "content": "Write a long story about a ticket queue."}]


def test_bad_price_table_stops_the_service_at_startup(tiny_base, models_dir, tmp_path, monkeypatch):
    """A price table with a negative price: ``ftops serve`` exits 1 in its pre-flight check, naming file and field,
    with one line and before any engine starts."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("FTOPS_HOME", str(home))
    monkeypatch.setenv("FTOPS_MODELS", str(models_dir))
    prices = yaml.safe_load((REPO / "costs" / "prices.yaml").read_text())
    prices["models"]["openai/gpt-4o-mini"]["output_usd_per_mtok"] = -0.6
    bad = tmp_path / "prices.yaml"
    bad.write_text(yaml.safe_dump(prices))
    service = start_service(
        home,
        models_dir,
        written_by="tests/test_cost_load.py",
        base=BASE,
        engine={"max_model_len": 512, "max_lora_rank": 8},
        env={"FTOPS_PRICES": str(bad)},
    )
    field = "models.openai/gpt-4o-mini.output_usd_per_mtok"
    try:
        assert service.proc.wait(timeout=120) == 1
        output = (home / "server.log").read_text()
        errors = [line for line in output.splitlines() if "error" in line]
        assert len(errors) == 1 and str(bad) in errors[0] and field in errors[0], output[-3000:]
        assert "Traceback" not in output and "vllm" not in output.lower(), output[-3000:]
    finally:
        service.stop()


@pytest.fixture(scope="module")
def load_service(tiny_base, models_dir, tmp_path_factory):
    """The running service with adapter ``load-chat`` v1 at production; its ledger at ``<home>/ledger.db``."""
    home = tmp_path_factory.mktemp("cost-load-home")
    with service_env(home, models_dir) as mp:
        mp.delenv("FTOPS_PRICES", raising=False)
        from mlflow import MlflowClient

        v1 = register_version(
            ADAPTER, make_adapter(tiny_base, tmp_path_factory.mktemp("load-adapter") / "v1", 3), tiny_base
        )
        MlflowClient().set_registered_model_alias(ADAPTER, "production", v1)
        ledger_url = f"sqlite:///{home / 'ledger.db'}"
        with running_service(
            home,
            models_dir,
            written_by="tests/test_cost_load.py",
            base=BASE,
            adapters=[f"{ADAPTER}@production"],
            ledger_url=ledger_url,
            engine={"max_model_len": 1024, "max_lora_rank": 8, "max_loras": 2, "dtype": "bfloat16", "max_num_seqs": 16},
            limits={"max_concurrency": 64},
        ) as service:
            yield {"url": service.url, "ledger_url": ledger_url, "version": v1, "home": home}


def test_load_every_request_in_the_ledger_with_the_usage_the_client_got(load_service):
    """200 requests, 16 concurrent clients, a third streamed, a third streamed and cancelled after a few chunks:
    ledger rows = requests sent, token sums = the usage the clients received, cancels recorded with partial tokens."""
    from openai import OpenAI
    from prometheus_client.parser import text_string_to_metric_families

    from ftops.costs.usage import usage_report
    from ftops.serving.ledger import Ledger

    client = OpenAI(base_url=load_service["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
    lock = threading.Lock()
    got: dict[str, list[tuple[int, int]]] = {"ok": [], "cancelled": []}

    def one(i: int) -> str:
        model = (BASE, ADAPTER)[i % 2]
        kind = ("plain", "stream", "cancel")[(i // 2) % 3]
        if kind == "plain":
            r = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=12, temperature=0)
            seen, status = (r.usage.prompt_tokens, r.usage.completion_tokens), "ok"
        elif kind == "stream":
            stream = client.chat.completions.create(
                model=model,
                messages=PROMPT,
                max_tokens=12,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            usage = [c.usage for c in stream if c.usage is not None]
            seen, status = (usage[-1].prompt_tokens, usage[-1].completion_tokens), "ok"
        else:  # a long answer the client walks away from after 3 chunks
            stream = client.chat.completions.create(
                model=model,
                messages=PROMPT,
                max_tokens=800,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True, "continuous_usage_stats": True},
                extra_body={"ignore_eos": True},
            )
            usage = None
            for n, chunk in enumerate(stream):
                usage = chunk.usage or usage
                if n == 2:
                    break
            stream.close()
            seen, status = (usage.prompt_tokens, usage.completion_tokens), "cancelled"
        with lock:
            got[status].append(seen)
        return status

    started = time.monotonic()
    with ThreadPoolExecutor(N_CLIENTS) as pool:
        statuses = list(pool.map(one, range(N_REQUESTS)))
    print(f"{N_REQUESTS} requests from {N_CLIENTS} clients in {time.monotonic() - started:.1f} s")
    assert len(statuses) == N_REQUESTS

    ledger = Ledger(load_service["ledger_url"])
    deadline = time.monotonic() + 30  # a cancelled stream is recorded once the server has seen the disconnect
    while len(rows := ledger.rows()) < N_REQUESTS and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(rows) == N_REQUESTS
    cancelled = [r for r in rows if r["status"] == "cancelled"]
    print(
        f"ledger: {len(rows)} rows, {len(cancelled)} cancelled; prompt {sum(r['prompt_tokens'] for r in rows)}, "
        f"completion {sum(r['completion_tokens'] for r in rows)} tokens; cancelled completion tokens "
        f"{sum(r['completion_tokens'] for r in cancelled)} (the clients saw {sum(c for _, c in got['cancelled'])})"
    )
    by_status = {s: [r for r in rows if r["status"] == s] for s in ("ok", "cancelled", "failed")}
    assert by_status["failed"] == []
    # A stream the client walks away from is `cancelled` once the server sees the disconnect. When a busy client thread
    # reads its 3 chunks late, the server may have sent all 800 tokens before that: the ledger then truthfully holds a
    # finished answer (`ok`, 800 tokens, the work done). Such races are rare; most cancels must show as cancels.
    finished_first = [r for r in by_status["ok"] if r["completion_tokens"] == 800]
    by_status["ok"] = [r for r in by_status["ok"] if r["completion_tokens"] != 800]
    assert len(by_status["ok"]) == len(got["ok"])
    assert len(by_status["cancelled"]) + len(finished_first) == len(got["cancelled"])
    assert len(by_status["cancelled"]) > 50, (len(by_status["cancelled"]), len(finished_first))
    # completed requests: the ledger's tokens are exactly the usage the clients received
    assert sum(r["prompt_tokens"] for r in by_status["ok"]) == sum(p for p, _ in got["ok"])
    assert sum(r["completion_tokens"] for r in by_status["ok"]) == sum(c for _, c in got["ok"])
    assert sorted((r["prompt_tokens"], r["completion_tokens"]) for r in by_status["ok"]) == sorted(got["ok"])
    # cancelled: the full prompt, and the completion tokens produced before the disconnect (at least what the client
    # saw, fewer than asked for)
    abandoned = by_status["cancelled"] + finished_first
    assert sum(r["prompt_tokens"] for r in abandoned) == sum(p for p, _ in got["cancelled"])
    cancelled_tokens = sorted(r["completion_tokens"] for r in by_status["cancelled"])
    assert all(0 < t < 800 for t in cancelled_tokens), cancelled_tokens
    assert sum(r["completion_tokens"] for r in abandoned) >= sum(c for _, c in got["cancelled"])
    assert {(r["model"], r["adapter"], r["registry_version"]) for r in rows} == {
        (BASE, None, None),
        (BASE, ADAPTER, load_service["version"]),
    }
    assert {r["api_key_id"] for r in rows} == {"default"}

    # GET /v1/usage (admin key) reports the same rows by the same formula as the report recomputed here
    status, _, served_report = http(
        "GET", load_service["url"] + "/v1/usage", None, {"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert status == 200
    mine = usage_report(ledger)
    ledger.close()
    for key in ("requests", "prompt_tokens", "completion_tokens", "busy_s", "self_hosted_usd"):
        assert served_report["total"][key] == pytest.approx(mine["total"][key]), key
    assert served_report["total"]["hosted_usd"] == pytest.approx(mine["total"]["hosted_usd"])

    # the Prometheus counters the service exposes carry the same tokens
    status, _, body = http("GET", load_service["url"] + "/metrics", None, {"Authorization": f"Bearer {API_KEY}"})
    assert status == 200
    tokens = {"prompt": 0.0, "completion": 0.0}
    for family in text_string_to_metric_families(body["raw"].decode()):
        if family.name == "ftops_tokens":
            for sample in family.samples:
                if sample.name == "ftops_tokens_total":
                    tokens[sample.labels["kind"]] += sample.value
    assert tokens["prompt"] == sum(r["prompt_tokens"] for r in rows)
    assert tokens["completion"] == sum(r["completion_tokens"] for r in rows)
