"""vLLM's CPU engine in bfloat16 against float32 on SmolLM2-135M-Instruct: the engine the gate and serving run.

    .venv/bin/python bench/bench_engine_dtype.py [--base smollm2-135m-instruct] [--prompts 16] [--tokens 64]

``ftops.vllm_settings.engine_dtype`` picks float32 on CPUs without native bf16; this measures why. Each dtype runs in
its own process (one vLLM engine per process), one after the other in this run: start-up, a warm-up batch, then
``--prompts`` greedy completions of exactly ``--tokens`` tokens (``ignore_eos``) batched together. Prints both
throughputs and their ratio with the machine's CPU capability and load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

DTYPES = ("bfloat16", "float32")


def one(base_path: str, dtype: str, prompts: int, tokens: int) -> dict:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(model=base_path, dtype=dtype, max_model_len=1024, seed=0, enforce_eager=True)
    started = time.perf_counter() - start
    texts = [f"Write a short note about ticket number {i} and the customer's issue." for i in range(prompts)]
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    llm.generate(texts[:2], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outputs = llm.generate(texts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    n = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"dtype": dtype, "start_s": started, "tokens": n, "seconds": seconds, "tokens_per_s": n / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure this dtype in this process
    args = parser.parse_args()
    from ftops.base import load_base

    base_path = load_base(args.base).path
    if args.one:
        print("RESULT " + json.dumps(one(base_path, args.one, args.prompts, args.tokens)), flush=True)
        return

    import torch

    from ftops.precision import cpu_has_native_bf16

    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()}"
    )
    results = {}
    for dtype in DTYPES:
        argv = [sys.executable, __file__, "--base", args.base, "--prompts", str(args.prompts)]
        out = subprocess.run(
            [*argv, "--tokens", str(args.tokens), "--one", dtype], capture_output=True, text=True, check=True
        )
        line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))  # vLLM prints to stdout too
        results[dtype] = r = json.loads(line.removeprefix("RESULT "))
        print(
            f"{dtype}: start {r['start_s']:.1f} s, {r['tokens']} tokens in {r['seconds']:.1f} s, "
            f"{r['tokens_per_s']:.1f} tokens/s"
        )
    ratio = results["float32"]["tokens_per_s"] / results["bfloat16"]["tokens_per_s"]
    print(f"ratio float32/bfloat16: {ratio:.2f}x (load {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
