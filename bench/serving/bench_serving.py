"""Serving benchmark: output tokens/s, TTFT and TPOT at 1, 4 and 16 concurrent streaming clients, in one run, for
(a) the ftops service (``ftops serve``: BentoML + vLLM, adapter resolved from the registry),
(b) vLLM's own OpenAI server on the same base and adapter (``python -m vllm.entrypoints.openai.api_server``),
(c) a plain transformers + PEFT ``generate`` server (bench/serving/hf_server.py), same base and adapter.

Every request asks the adapter for exactly ``--max-tokens`` tokens (``ignore_eos``), greedy, streamed, through
the real ``openai`` client. One server runs at a time. Prints a table, the ratios the acceptance asks for, and a
Markdown section to append to BENCHMARKS.md.

    .venv/bin/python bench/serving/bench_serving.py [--base smollm2-135m-instruct] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KEY = "bench-key-0123456789abcdef"
ADAPTER = "bench-adapter"
PROMPT = [{"role": "user", "content": "Write a short note about the weather in Paris in spring."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_adapter(base, out: Path) -> Path:
    """A PEFT LoRA (r=8 on q_proj, v_proj) on ``base`` with small random weights (throughput does not care)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftops.adapter import save_adapter

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    save_adapter(model, tokenizer, out, base.name, base.sha256, "none")
    return out


def register(folder: Path, base) -> None:
    import mlflow
    from mlflow import MlflowClient

    from ftops import settings
    from ftops.adapter import ARTIFACT_PATH, TAG_BASE_NAME, TAG_BASE_SHA256

    settings.configure_mlflow()
    with mlflow.start_run(experiment_id=settings.experiment_id()) as run:
        mlflow.log_artifacts(str(folder), ARTIFACT_PATH)
    client = MlflowClient()
    client.create_registered_model(ADAPTER)
    mv = client.create_model_version(
        ADAPTER,
        f"runs:/{run.info.run_id}/{ARTIFACT_PATH}",
        run_id=run.info.run_id,
        tags={TAG_BASE_NAME: base.name, TAG_BASE_SHA256: base.sha256},
    )
    client.set_registered_model_alias(ADAPTER, "production", mv.version)


class Server:
    """One server process in its own process group; stopped by the group."""

    def __init__(self, argv: list[str], env: dict, ready_url: str, log: Path) -> None:
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(
            argv, env=env, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.ready_url, self.log_path = ready_url, log

    def wait_ready(self, timeout: float = 600) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=5) as r:
                    if r.status == 200:
                        return time.monotonic() - start
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"server not ready in {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        self.log.close()


async def one_request(client, model: str, max_tokens: int) -> dict:
    start = time.perf_counter()
    first = None
    tokens = 0
    stream = await client.chat.completions.create(
        model=model,
        messages=PROMPT,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    first = first or end
    return {
        "ttft": first - start,
        "tpot": (end - first) / max(tokens - 1, 1),
        "tokens": tokens,
        "start": start,
        "end": end,
    }


async def run_level(base_url: str, model: str, clients: int, requests_each: int, max_tokens: int) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=7200)  # queued behind 15 others

    async def worker() -> list[dict]:
        return [await one_request(client, model, max_tokens) for _ in range(requests_each)]

    t0 = time.perf_counter()
    results = [r for rs in await asyncio.gather(*(worker() for _ in range(clients))) for r in rs]
    wall = time.perf_counter() - t0
    await client.close()
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": sum(r["tokens"] for r in results),
        "wall_s": wall,
        "tok_s": sum(r["tokens"] for r in results) / wall,
        "ttft_ms": statistics.median(r["ttft"] for r in results) * 1000,
        "tpot_ms": statistics.median(r["tpot"] for r in results) * 1000,
    }


def bench_server(
    name: str,
    server: Server,
    base_url: str,
    model: str,
    levels: list[int],
    requests_each: int,
    max_tokens: int,
) -> list[dict]:
    try:
        start_s = server.wait_ready()
        print(f"[{name}] ready after {start_s:.0f} s", flush=True)
        asyncio.run(run_level(base_url, model, 1, 1, 8))  # warm-up
        rows = []
        for n in levels:
            row = asyncio.run(run_level(base_url, model, n, requests_each, max_tokens))
            row["server"] = name
            print(
                f"[{name}] {n:>2} clients: {row['tok_s']:7.1f} tok/s  TTFT {row['ttft_ms']:7.0f} ms  "
                f"TPOT {row['tpot_ms']:6.1f} ms  ({row['requests']} requests, {row['tokens']} tokens)",
                flush=True,
            )
            rows.append(row)
        return rows
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--requests", type=int, default=2, help="requests per client for the vLLM servers")
    parser.add_argument("--hf-requests", type=int, default=1, help="requests per client for transformers")
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument(
        "--vllm-first",
        action="store_true",
        help="run raw vLLM before ftops (this machine drifts: alternate the order between runs)",
    )
    parser.add_argument(
        "--vllm-ftops-ops",
        action="store_true",
        help="let raw vLLM load ftops's CPU LoRA ops too (default: vLLM as shipped, VLLM_PLUGINS='')",
    )
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="ftops-bench-serving-"))
    os.environ["FTOPS_HOME"] = str(work / "home")
    os.environ.setdefault("FTOPS_MODELS", str(REPO / ".ftops" / "models"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.update(HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false")
    from ftops.base import load_base
    from ftops.serving.config import EngineConfig
    from ftops.serving.engine import cpu_env

    base = load_base(args.base)
    adapter = make_adapter(base, work / "adapter")
    register(adapter, base)
    engine = {
        "max_model_len": 2048,
        "max_lora_rank": 8,
        "max_loras": 2,
        "dtype": "bfloat16",
        "max_num_seqs": 64,
    }
    config = work / "serve.yaml"
    config.write_text(
        "# .venv/bin/python bench/serving/bench_serving.py (written by the benchmark)\n"
        + json.dumps(
            {
                "base": base.name,
                "adapters": [f"{ADAPTER}@production"],
                "engine": engine,
                "limits": {"max_concurrency": 256},
            }
        )
        + "\n"
    )
    env = {**os.environ, "FTOPS_API_KEY": KEY, "BENTOML_HOME": str(work / "bentoml")}
    # raw vLLM gets the CPU settings ftops gives its engine; its LoRA ops are vLLM's own unless --vllm-ftops-ops
    engine_env = cpu_env(EngineConfig(**engine))  # what ftops serve sets for this engine
    vllm_env = {**env, **engine_env}
    if not args.vllm_ftops_ops:
        vllm_env["VLLM_PLUGINS"] = ""
    print(
        f"engine CPU settings: {engine_env}; raw vLLM plugins: {vllm_env.get('VLLM_PLUGINS', 'all')!r}",
        flush=True,
    )
    rows: list[dict] = []

    def run(name: str, argv, health: str, requests: int) -> list[dict]:
        """Start one server (``argv(port)``), wait for ``health``, measure it at every level, stop it."""
        port = free_port()
        server = Server(
            argv(port),
            vllm_env if name == "vllm" else env,
            f"http://127.0.0.1:{port}{health}",
            work / f"{name}.log",
        )
        return bench_server(name, server, f"http://127.0.0.1:{port}/v1", ADAPTER, levels, requests, args.max_tokens)

    ftops = (
        "ftops",
        lambda port: [
            sys.executable,
            "-m",
            "ftops.cli",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
        ],
        "/readyz",
        args.requests,
    )
    vllm = (
        "vllm",
        lambda port: [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            base.path,
            "--served-model-name",
            base.name,
            "--enable-lora",
            "--lora-modules",
            f"{ADAPTER}={adapter}",
            "--max-lora-rank",
            "8",
            "--max-loras",
            "2",
            "--max-model-len",
            "2048",
            "--dtype",
            "bfloat16",
            "--gpu-memory-utilization",
            "0.3",
            "--max-num-seqs",
            "64",
            "--disable-uvicorn-access-log",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        "/health",
        args.requests,
    )
    for server in (vllm, ftops) if args.vllm_first else (ftops, vllm):
        rows += run(*server)
    if not args.skip_hf:
        rows += run(
            "transformers",
            lambda port: [
                sys.executable,
                str(REPO / "bench/serving/hf_server.py"),
                base.path,
                str(adapter),
                str(port),
            ],
            "/readyz",
            args.hf_requests,
        )

    by = {(r["server"], r["clients"]): r for r in rows}
    top = max(levels)
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, no GPU"
    )
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    ratio_vllm = by[("ftops", top)]["tok_s"] / by[("vllm", top)]["tok_s"]
    lines = [
        "## Serving",
        "",
        f"`bench/serving/bench_serving.py`, {when}, {machine}, load average {load:.1f} at the start. "
        f"Base {base.name} + one LoRA (r=8, q/v), {args.max_tokens} output tokens per request (ignore_eos, "
        f"greedy, streamed through the `openai` client); vLLM servers: {args.requests} requests per client, "
        f"transformers: {args.hf_requests}. Engine CPU settings for ftops and raw vLLM: "
        f"{engine_env}; raw vLLM's LoRA ops: "
        f"{'ftops' if args.vllm_ftops_ops else 'vLLM as shipped'}.",
        "",
        "| server | clients | output tok/s | median TTFT ms | median TPOT ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['server']} | {r['clients']} | {r['tok_s']:.1f} | {r['ttft_ms']:.0f} | {r['tpot_ms']:.1f} |" for r in rows
    ]
    lines += ["", f"ftops / raw vLLM output tok/s at {top} clients: **{ratio_vllm:.2f}x** (target >= 0.9x)"]
    if not args.skip_hf:
        ratio_hf = by[("ftops", top)]["tok_s"] / by[("transformers", top)]["tok_s"]
        lines.append(f"ftops / transformers+PEFT output tok/s at {top} clients: **{ratio_hf:.1f}x** (target >= 5x)")
    print("\n" + "\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
