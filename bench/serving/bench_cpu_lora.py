"""vLLM's CPU engine with a LoRA adapter, three ways in one run: what ftops changes below the HTTP layer.

Each side is a fresh process running vLLM's offline engine (``vllm.LLM``) on the same base and adapter, greedy,
``--max-tokens`` tokens per request (``ignore_eos``), 1 request and then ``--batch`` requests at once:

- ``vllm``: vLLM as shipped: one of the host's cores reserved for its scheduler, its own LoRA ops (``VLLM_PLUGINS=''``);
- ``vllm-all-cores``: the same with no core reserved (``VLLM_CPU_NUM_OF_RESERVED_CPU=0``, ftops's ``auto`` on
  small hosts);
- ``ftops``: no core reserved and ftops's LoRA ops (ftops/cpu_lora.py, loaded as a vLLM plugin).

Prints output tokens/s and ms per decode step for each side, and the ratios to ``vllm``.

    .venv/bin/python bench/serving/bench_cpu_lora.py [--base smollm2-135m-instruct] [--batch 16] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench" / "serving"))
from bench_serving import PROMPT, make_adapter  # noqa: E402

SIDES = {
    "vllm": {"VLLM_PLUGINS": "", "VLLM_CPU_NUM_OF_RESERVED_CPU": None},
    "vllm-all-cores": {"VLLM_PLUGINS": "", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
    "ftops": {"VLLM_PLUGINS": None, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
}


def child(base_path: str, adapter: str, batch: int, max_tokens: int) -> None:
    """One side: start the engine, warm up, time 1 request and ``batch`` requests; print one JSON line."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    llm = LLM(
        model=base_path,
        enable_lora=True,
        max_lora_rank=8,
        max_loras=2,
        max_model_len=1024,
        dtype="bfloat16",
        gpu_memory_utilization=0.3,
        seed=0,
    )
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    lora = LoRARequest("bench", 1, adapter)
    llm.chat(PROMPT, params, lora_request=lora, use_tqdm=False)  # warm-up
    row = {}
    for n in (1, batch):
        start = time.perf_counter()
        outputs = llm.chat([PROMPT] * n, params, lora_request=lora, use_tqdm=False)
        wall = time.perf_counter() - start
        row[n] = {
            "tok_s": sum(len(o.outputs[0].token_ids) for o in outputs) / wall,
            "ms_per_step": wall / max_tokens * 1000,
        }
    print("RESULT " + json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--child", nargs=2, metavar=("BASE_PATH", "ADAPTER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.batch, args.max_tokens)

    os.environ.setdefault("FTOPS_MODELS", str(REPO / ".ftops" / "models"))
    from ftops.base import load_base

    base = load_base(args.base)
    adapter = make_adapter(base, Path(tempfile.mkdtemp(prefix="ftops-bench-cpu-lora-")) / "adapter")
    load = os.getloadavg()[0]
    rows = {}
    for side, overrides in SIDES.items():
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
        for key, value in overrides.items():
            env.pop(key, None)
            if value is not None:
                env[key] = value
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--batch",
                str(args.batch),
                "--max-tokens",
                str(args.max_tokens),
                "--child",
                base.path,
                str(adapter),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            raise SystemExit(f"side {side} failed:\n{out.stderr[-3000:]}")
        rows[side] = {int(k): v for k, v in json.loads(line[0][7:]).items()}
        print(
            f"[{side}] "
            + "  ".join(
                f"{n} at once: {r['tok_s']:.1f} tok/s, {r['ms_per_step']:.0f} ms/step" for n, r in rows[side].items()
            ),
            flush=True,
        )

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"\n`bench/serving/bench_cpu_lora.py`, {when}, {os.cpu_count()} cores, load average {load:.1f} at the "
        f"start; {base.name} bf16 + LoRA r=8 (q/v), {args.max_tokens} tokens per request\n"
    )
    print(
        "| side | 1 request tok/s | ms/step | " + f"{args.batch} at once tok/s | ms/step | ratio to vllm at "
        f"{args.batch} |\n| --- | --- | --- | --- | --- | --- |"
    )
    for side, r in rows.items():
        print(
            f"| {side} | {r[1]['tok_s']:.1f} | {r[1]['ms_per_step']:.0f} | {r[args.batch]['tok_s']:.1f} | "
            f"{r[args.batch]['ms_per_step']:.0f} | {r[args.batch]['tok_s'] / rows['vllm'][args.batch]['tok_s']:.2f}x |"
        )


if __name__ == "__main__":
    main()
