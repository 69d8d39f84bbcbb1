"""Load with chaos against one real ``ftops serve`` (issue 14): does the ledger hold exactly one row per request the
clients made, with the tokens they saw, through a SIGTERM of the service and a PostgreSQL restart?

- the ledger on a throwaway PostgreSQL (Debian's ``initdb``/``pg_ctl``), ``ledger_url`` in the serve config;
- ``ftops serve`` on the tiny base (a random 2-layer Llama with SmolLM2's tokenizer: what is measured is the
  bookkeeping under load, not the answers; the tiny base makes 500 requests take minutes on 2 cores, not an hour);
- 64 concurrent clients (the real ``openai`` client, async), 500 jobs: half streamed, half not; a fifth of the streams
  closed by the client after a few chunks. A job whose attempt gets 503 or a connection error waits (``Retry-After``,
  else a backoff) and tries again: every attempt is a request the client made, with its own ``X-Request-Id``, and is
  counted; the ``openai`` client's own retries are off;
- one SIGTERM of the service once ``--sigterm-at`` jobs are done (it drains, then exits; it is started again on the
  same port and ledger and the run goes on), one PostgreSQL restart (stop, ``--pg-down-s`` seconds, start) once
  ``--pg-restart-at`` jobs are done;
- at the end (the spool written back): every attempt against the ledger. Prints a table and the mismatches.

    .venv/bin/python bench/serving/load_chaos.py [--jobs 500] [--clients 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KEY = "load-key-0123456789abcdef"
BASE = "tiny-llama"
PASSWORD = "load-S3cret"
MESSAGES = [{"role": "user", "content": "Write a few lines about load balancers."}]
PG_BIN = next(
    (p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True) if (p / "initdb").exists()), None
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ PostgreSQL
class Postgres:
    """A throwaway cluster (trust auth; the password in the URL is accepted and ignored), run as ``postgres`` when
    this is root."""

    def __init__(self) -> None:
        if PG_BIN is None:
            sys.exit("PostgreSQL server binaries not installed (apt-get install postgresql)")
        self.root = Path(tempfile.mkdtemp(prefix="ftops-load-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self.data, self.port = self.root / "data", free_port()
        self.url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.start()

    def _run(self, tool: str, *argv: str) -> None:
        cmd = [str(PG_BIN / tool), *argv]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} failed: {proc.stderr or proc.stdout}")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -h 127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "pg.log"), "-w", "-o", opts, "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ the service
class Service:
    """``ftops serve --config`` in its own process group; :meth:`start` again reuses the port, home and ledger."""

    def __init__(self, home: Path, config: Path, models: Path) -> None:
        self.home, self.config, self.port = home, config, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "FTOPS_ADMIN_KEY")}
        self.env |= {
            "FTOPS_HOME": str(home),
            "FTOPS_MODELS": str(models),
            "FTOPS_API_KEY": KEY,
            "BENTOML_HOME": str(home / "bentoml"),
            "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",
        }
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.home / f"server-{self.starts}.log", "wb")  # noqa: SIM115 (the child writes it)
        argv = [sys.executable, "-m", "ftops.cli", "serve", "--config", str(self.config), "--port", str(self.port)]
        self.proc = subprocess.Popen(
            argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=5) as r:
                return r.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def wait_ready(self, timeout: float = 1800) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"service not ready (exit {self.proc.poll()}); see {self.home}/server-*.log")
            time.sleep(1)

    def metric(self, name: str) -> float:
        request = urllib.request.Request(self.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
        with urllib.request.urlopen(request, timeout=30) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return 0.0

    def kill_family(self) -> None:
        """SIGKILL whatever is left of the service (the BentoML worker runs in a process group of its own)."""
        import psutil

        if self.proc is None:
            return
        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait()


# ------------------------------------------------------------------------------------------------ the clients
@dataclass
class Attempt:
    """One request a client made, as the client saw it."""

    job: int
    attempt: int
    request_id: str
    kind: str  # "plain", "stream" or "cancel" (a stream the client closes after ``cancel_after`` chunks)
    outcome: str = ""  # ok, cancelled, refused, connection_error, error
    http_status: int | None = None
    code: str | None = None  # the error code of a refusal
    tokens_seen: int = 0  # completion tokens the client received (counted from their logprobs)
    usage_tokens: int | None = None  # completion tokens the usage the client received says
    detail: str = ""
    started: float = 0.0
    ended: float = 0.0


@dataclass
class Run:
    attempts: list[Attempt] = field(default_factory=list)
    done: int = 0
    events: list[tuple[float, str]] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def event(self, what: str) -> None:
        self.events.append((time.monotonic() - self.t0, what))
        print(f"[{time.monotonic() - self.t0:7.1f} s] {what}", flush=True)


async def one_attempt(client, a: Attempt, max_tokens: int, cancel_after: int) -> float | None:
    """Make the request; fill ``a``; return the seconds to wait before the next attempt (None: the job is done)."""
    import httpx
    import openai

    kw = dict(
        model=BASE,
        messages=MESSAGES,
        max_tokens=max_tokens,
        temperature=1.0,
        logprobs=True,
        extra_body={"ignore_eos": True},
        extra_headers={"X-Request-Id": a.request_id},
    )
    try:
        if a.kind == "plain":
            r = await client.chat.completions.create(**kw)
            a.outcome, a.http_status = "ok", 200
            a.tokens_seen = len(r.choices[0].logprobs.content or [])
            a.usage_tokens = r.usage.completion_tokens
            return None
        stream = await client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
        a.http_status = 200
        chunks = 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
                a.tokens_seen += len(chunk.choices[0].logprobs.content)
                chunks += 1
            if chunk.usage is not None:
                a.usage_tokens = chunk.usage.completion_tokens
            if a.kind == "cancel" and chunks >= cancel_after:
                await stream.close()
                a.outcome = "cancelled"
                return None
        a.outcome = "ok" if a.usage_tokens is not None else "error"
        if a.outcome == "error":
            a.detail = "the stream ended without its usage chunk"
        return None
    except openai.APIStatusError as e:
        a.outcome, a.http_status = "refused", e.status_code
        body = e.body if isinstance(e.body, dict) else {}
        a.code = body.get("code")
        a.request_id = e.response.headers.get("x-request-id", a.request_id)
        if e.status_code in (429, 503):
            return float(e.response.headers.get("retry-after") or 1)
        a.detail = str(body.get("message"))[:200]
        return None
    except (openai.APIConnectionError, httpx.HTTPError) as e:
        # before an answer (refused or reset connection) or mid-stream (the server went away)
        a.outcome = "connection_error"
        a.detail = f"{type(e).__name__}: {e}"[:200] + (f" after {a.tokens_seen} tokens" if a.http_status else "")
        return 2.0


async def client_loop(client, queue: asyncio.Queue, run: Run, rng: random.Random) -> None:
    while True:
        try:
            job, kind = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        max_tokens = 1000 if kind == "cancel" else rng.randint(8, 24)
        cancel_after = rng.randint(2, 8)
        attempt, backoff = 0, 1.0
        while True:
            attempt += 1
            a = Attempt(job, attempt, f"load-{job:04d}-{attempt}", kind, started=time.monotonic() - run.t0)
            run.attempts.append(a)
            wait = await one_attempt(client, a, max_tokens, cancel_after)
            a.ended = time.monotonic() - run.t0
            if wait is None:
                break
            if a.outcome == "connection_error":  # the service is restarting: back off (2, 4, 8 s, at most 8)
                wait, backoff = min(2.0 * backoff, 8.0), min(backoff * 2, 4.0)
            await asyncio.sleep(wait)
        run.done += 1


async def chaos(service: Service, pg: Postgres, run: Run, args) -> dict:
    """SIGTERM the service once ``sigterm_at`` jobs are done, start it again once it exited; restart PostgreSQL
    once ``pg_restart_at`` jobs are done. Returns what it measured."""
    loop = asyncio.get_running_loop()
    out: dict = {}
    while run.done < args.sigterm_at:
        await asyncio.sleep(0.2)
    out["spooled_first"] = await loop.run_in_executor(None, service.metric, "ftops_ledger_spooled_rows_total")
    run.event(f"SIGTERM to the service (pid {service.proc.pid}), {run.done} jobs done")
    sent = time.monotonic()
    service.proc.send_signal(signal.SIGTERM)
    await loop.run_in_executor(None, service.proc.wait)
    out["drain_exit_s"] = time.monotonic() - sent
    run.event(f"the service exited ({service.proc.returncode}) {out['drain_exit_s']:.1f} s after the SIGTERM")
    await loop.run_in_executor(None, service.kill_family)  # nothing of it may hold the port or the engine's memory
    service.start()
    run.event("the service started again on the same port and ledger")
    await loop.run_in_executor(None, service.wait_ready)
    out["restart_ready_s"] = time.monotonic() - sent
    run.event(f"ready again, {out['restart_ready_s']:.1f} s after the SIGTERM")
    while run.done < args.pg_restart_at:
        await asyncio.sleep(0.2)
    run.event(f"PostgreSQL stopped, {run.done} jobs done")
    await loop.run_in_executor(None, pg.stop)
    await asyncio.sleep(args.pg_down_s)
    await loop.run_in_executor(None, pg.start)
    run.event(f"PostgreSQL started again after {args.pg_down_s:.0f} s")
    return out


async def load(service: Service, pg: Postgres, args) -> tuple[Run, dict]:
    import httpx
    from openai import AsyncOpenAI

    rng = random.Random(args.seed)
    kinds = []
    for job in range(args.jobs):  # half streamed; a fifth of the streams cancelled by the client
        kinds.append((job, "plain" if job % 2 == 0 else ("cancel" if job % 10 == 1 else "stream")))
    rng.shuffle(kinds)
    queue: asyncio.Queue = asyncio.Queue()
    for item in kinds:
        queue.put_nowait(item)
    limits = httpx.Limits(max_connections=args.clients * 2, max_keepalive_connections=args.clients)
    client = AsyncOpenAI(
        base_url=service.url + "/v1",
        api_key=KEY,
        max_retries=0,
        timeout=600,
        http_client=httpx.AsyncClient(limits=limits, timeout=600),
    )
    run = Run()
    run.event(f"{args.clients} clients, {args.jobs} jobs")
    chaos_task = asyncio.create_task(chaos(service, pg, run, args))
    await asyncio.gather(*(client_loop(client, queue, run, random.Random(args.seed + i)) for i in range(args.clients)))
    run.event("every job done")
    measured = await chaos_task
    await client.close()
    return run, measured


# ------------------------------------------------------------------------------------------------ the comparison
def compare(attempts: list[Attempt], rows: list[dict]) -> tuple[int, list[str], dict]:
    """(rows matched, mismatches, notes): every attempt against its ledger rows (by request id; vLLM names an
    answer ``chatcmpl-<X-Request-Id>``)."""
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["request_id"].removeprefix("chatcmpl-"), []).append(r)
    matched, bad = 0, []
    notes = {"cancelled_ledger_tokens": 0, "cancelled_client_tokens": 0, "connection_errors_with_row": []}
    claimed = set()
    for a in attempts:
        found = by_id.get(a.request_id, [])
        claimed.add(a.request_id)
        where = f"{a.request_id} ({a.kind}, client: {a.outcome} {a.http_status or ''} {a.code or ''}".rstrip() + ")"
        if a.outcome == "connection_error":
            if len(found) > 1:
                bad.append(f"{where}: {len(found)} rows")
            elif found:  # the server saw it (e.g. reset mid-stream): its row must say it did not end well
                notes["connection_errors_with_row"].append((a.request_id, found[0]["status"], a.detail))
                matched += 1
            continue
        if len(found) != 1:
            bad.append(f"{where}: {len(found)} rows")
            continue
        row = found[0]
        if a.outcome == "ok":
            ok = row["status"] == "ok" and row["completion_tokens"] == a.usage_tokens == a.tokens_seen
        elif a.outcome == "cancelled":
            ok = row["status"] == "cancelled" and row["completion_tokens"] >= a.tokens_seen
            notes["cancelled_ledger_tokens"] += row["completion_tokens"]
            notes["cancelled_client_tokens"] += a.tokens_seen
        elif a.outcome == "refused":
            ok = row["status"] == "refused" and row["http_status"] == a.http_status and row["completion_tokens"] == 0
        else:
            ok = False
        if ok:
            matched += 1
        else:
            bad.append(
                f"{where}: ledger {row['status']} {row['http_status']} {row['completion_tokens']} tokens, "
                f"client saw {a.tokens_seen} (usage {a.usage_tokens}) {a.detail}"
            )
    for request_id, found in by_id.items():
        if request_id not in claimed:
            bad.append(f"{request_id}: {len(found)} row(s) for no request a client made ({found[0]['status']})")
    return matched, bad, notes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--sigterm-at", type=int, default=150, help="SIGTERM the service once this many jobs are done")
    p.add_argument("--pg-restart-at", type=int, default=350, help="restart PostgreSQL once this many jobs are done")
    p.add_argument("--pg-down-s", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs) after the run")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ftops-load-"))
    home, models = work / "home", work / "models"
    home.mkdir()
    models.mkdir()
    os.environ.update(FTOPS_HOME=str(home), FTOPS_MODELS=str(models), HF_HUB_OFFLINE="1")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    sys.path.insert(0, str(REPO / "tests"))  # the tiny base's builder is a test helper: tests/tiny.py
    from tiny import build_tiny_llama

    from ftops.base import SMOLLM2_NAME, import_base, load_base
    from ftops.serving.ledger import Ledger, spool_path

    # 1. the tiny base, beside SmolLM2 (its tokenizer)
    smollm2 = load_base(SMOLLM2_NAME, REPO / ".ftops" / "models")
    import_base(build_tiny_llama(Path(smollm2.path), work / "tiny-llama"), BASE, models)
    # 2. PostgreSQL and the service
    pg = Postgres()
    config = home / "serve.yaml"
    config.write_text(
        "# .venv/bin/python bench/serving/load_chaos.py (written by it)\n"
        f"base: {BASE}\nadapters: []\nledger_url: {pg.url}\ndrain_timeout_s: 120\n"
        "engine: {max_model_len: 2048, dtype: bfloat16, max_num_seqs: 64}\n"
        f"limits: {{max_concurrency: {args.clients * 2}, retry_after_s: 1}}\n"
    )
    service = Service(home, config, models)
    started = time.monotonic()
    try:
        service.start()
        service.wait_ready()
        print(f"service ready in {time.monotonic() - started:.0f} s at {service.url}", flush=True)
        # 3. the load, with its SIGTERM and PostgreSQL restart
        began = datetime.now(UTC)
        wall = time.monotonic()
        run, measured = asyncio.run(load(service, pg, args))
        wall = time.monotonic() - wall
        # 4. the spool written back (the service's retry thread), then the service stopped
        deadline = time.monotonic() + 300
        while spool_path(pg.url).exists() and spool_path(pg.url).stat().st_size and time.monotonic() < deadline:
            time.sleep(1)
        spooled = service.metric("ftops_ledger_spooled_rows_total")
        replayed = service.metric("ftops_ledger_replayed_rows_total")
        service.proc.send_signal(signal.SIGTERM)
        try:
            service.proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            print("the service did not exit within 600 s of its last SIGTERM: killed", flush=True)
        with Ledger(pg.url) as ledger:  # opening it writes back whatever the spool still holds
            rows = ledger.rows()
        left = spool_path(pg.url).stat().st_size if spool_path(pg.url).exists() else 0
    finally:
        service.kill_family()
        pg.remove()
    # 5. the comparison
    matched, mismatches, notes = compare(run.attempts, rows)
    report(args, run, rows, matched, mismatches, notes, measured, spooled, replayed, left, wall, began)
    logs = sorted(home.glob("server-*.log"))
    password_leaks = [str(f) for f in logs if PASSWORD in f.read_text(errors="replace")]
    print(f"ledger password in the server logs: {'yes: ' + ', '.join(password_leaks) if password_leaks else 'no'}")
    if args.keep:
        print(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def report(args, run, rows, matched, mismatches, notes, measured, spooled, replayed, left, wall, began) -> None:
    attempts = run.attempts
    count = lambda pred: sum(1 for a in attempts if pred(a))  # noqa: E731
    load_avg = open("/proc/loadavg").read().split()[:3]
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[f"{r['status']} {r['http_status']}"] = statuses.get(f"{r['status']} {r['http_status']}", 0) + 1
    table = [
        ("jobs", args.jobs),
        ("requests made (attempts)", len(attempts)),
        ("ok", count(lambda a: a.outcome == "ok")),
        ("  of them streamed", count(lambda a: a.outcome == "ok" and a.kind != "plain")),
        ("cancelled by the client mid-stream", count(lambda a: a.outcome == "cancelled")),
        ("refused 503 shutting_down (drain)", count(lambda a: a.http_status == 503 and a.code == "shutting_down")),
        ("refused 503 not_ready (restart loading)", count(lambda a: a.http_status == 503 and a.code == "not_ready")),
        ("refused, other", count(lambda a: a.outcome == "refused" and a.http_status != 503)),
        ("connection errors", count(lambda a: a.outcome == "connection_error")),
        ("  of them mid-stream", count(lambda a: a.outcome == "connection_error" and a.http_status == 200)),
        ("other client errors", count(lambda a: a.outcome == "error")),
        ("ledger rows", len(rows)),
        ("rows matched", matched),
        ("mismatches", len(mismatches)),
        ("rows spooled (PostgreSQL down)", int(spooled)),
        ("spooled rows written back", int(replayed)),
        ("spool bytes left", left),
        ("SIGTERM -> exit (drain) s", f"{measured.get('drain_exit_s', 0):.1f}"),
        ("SIGTERM -> ready again s", f"{measured.get('restart_ready_s', 0):.1f}"),
        ("wall time s", f"{wall:.0f}"),
        ("machine", f"nproc {os.cpu_count()}, load average {' '.join(load_avg)}"),
        ("date", began.strftime("%Y-%m-%d %H:%M UTC")),
    ]
    width = max(len(k) for k, _ in table)
    print("\n| what | figure |\n| --- | --- |")
    for k, v in table:
        print(f"| {k.ljust(width)} | {v} |")
    print(f"\nledger rows by status: {json.dumps(dict(sorted(statuses.items())))}")
    print(
        f"cancelled streams: the ledger records {notes['cancelled_ledger_tokens']} completion tokens, the clients "
        f"read {notes['cancelled_client_tokens']} (the ledger counts what the server sent before it saw the close)"
    )
    if notes["connection_errors_with_row"]:
        print("connection errors the server saw (their rows):")
        for request_id, status, detail in notes["connection_errors_with_row"]:
            print(f"  {request_id}: {status} ({detail})")
    print(f"\nmismatches ({len(mismatches)}):")
    for line in mismatches:
        print("  " + line)
    for t, what in run.events:
        print(f"  event at {t:7.1f} s: {what}")


if __name__ == "__main__":
    main()
