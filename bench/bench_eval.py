"""Evaluation engines side by side: the same held-out prompts answered greedily by vLLM's offline engine (bf16,
batched, what ``ftops eval`` uses) and by transformers ``generate`` (fp32, the fallback), with and without a LoRA.

    .venv/bin/python bench/bench_eval.py [--prompts 16] [--tokens 48] [--base smollm2-135m-instruct]

Prompts are demo tickets; the adapter is a LoRA (r=16 on q/k/v/o) whose B is zero, so both engines do the LoRA work
and must give the base's answers. Engine start-up is timed apart from answering. Prints tokens/s of each engine,
the ratio vLLM/transformers, and how many answers the two engines agree on; paste it into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def run(engine, prompts, adapter, tokens) -> tuple[float, list]:
    start = time.perf_counter()
    gens = engine.chat(prompts, adapter, tokens)
    return time.perf_counter() - start, gens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--base", default="smollm2-135m-instruct")
    args = parser.parse_args()

    # the tests' adapter builder: a PEFT LoRA saved with ftops.adapter.save_adapter
    from conftest import build_adapter

    from ftops.base import load_base
    from ftops.expectations.demo_data import generate_tickets
    from ftops.registry.engines import TransformersEngine, VllmEngine

    base = load_base(args.base, REPO / ".ftops" / "models")
    prompts = [row["messages"][:-1] for row in generate_tickets(args.prompts, seed=7)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        adapter = build_adapter(base, Path(tmp) / "adapter", r=16, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
        answers = {}
        for name, make in (
            ("transformers", lambda: TransformersEngine(base.path, batch_size=args.prompts)),
            ("vllm", lambda: VllmEngine(base.path, max_lora_rank=16, max_model_len=1024)),
        ):
            t0 = time.perf_counter()
            engine = make()
            startup = time.perf_counter() - t0
            for label, lora in (("base", None), ("base+LoRA", adapter)):
                seconds, gens = run(engine, prompts, lora, args.tokens)
                n = sum(g.tokens for g in gens)
                rows.append((name, label, startup, seconds, n, n / seconds))
                answers[(name, label)] = [g.text for g in gens]
            if hasattr(engine, "close"):
                engine.close()
            del engine

    print(f"# bench_eval: {args.prompts} ticket prompts x <= {args.tokens} new tokens, greedy, base {base.name}")
    print(
        f"# {platform.node()} {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC (load average {os.getloadavg()[0]:.1f})"
    )
    print("| engine | adapter | start-up s | answer s | tokens | tokens/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, label, startup, seconds, n, tps in rows:
        print(f"| {name} | {label} | {startup:.1f} | {seconds:.1f} | {n} | {tps:.1f} |")
    tps = {(r[0], r[1]): r[5] for r in rows}
    for label in ("base", "base+LoRA"):
        ratio = tps[("vllm", label)] / tps[("transformers", label)]
        same = sum(a == b for a, b in zip(answers[("vllm", label)], answers[("transformers", label)]))
        print(f"ratio vLLM/transformers ({label}): {ratio:.2f}x tokens/s; identical answers {same}/{args.prompts}")
    lora_same = sum(a == b for a, b in zip(answers[("vllm", "base")], answers[("vllm", "base+LoRA")]))
    print(f"vLLM with the B=0 LoRA answered as the base on {lora_same}/{args.prompts} prompts")


if __name__ == "__main__":
    main()
