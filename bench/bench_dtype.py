"""bf16 against fp32 on this CPU: the matmul every LoRA/QLoRA step and every transformers forward is made of.

    .venv/bin/python bench/bench_dtype.py

Training and the transformers engine compute in bf16 (``training/job.py``: QLoRA's ``bnb_4bit_compute_dtype``, LoRA's
base). A CPU without native bf16 instructions (no AVX512_BF16 or AMX, e.g. AVX2 only) emulates them, and that can cost
more than the 2x bf16 is meant to save. This prints both throughputs on SmolLM2-135M's own shapes (hidden 576, MLP
1536, a batch of 8 x 192 tokens as configs/demo.yaml trains) and their ratio, with the machine's CPU capability.
"""

from __future__ import annotations

import os
import platform
import time
from datetime import UTC, datetime

import torch

SHAPES = [(8 * 192, 576, 576), (8 * 192, 576, 1536), (8 * 192, 1536, 576)]  # attention proj, MLP up, MLP down


def gflops(dtype: torch.dtype, repeats: int = 20) -> float:
    torch.manual_seed(0)
    total_flops, total_s = 0.0, 0.0
    for m, k, n in SHAPES:
        a, w = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(3):  # warm-up
            a @ w
        start = time.perf_counter()
        for _ in range(repeats):
            a @ w
        total_s += time.perf_counter() - start
        total_flops += 2 * m * k * n * repeats
    return total_flops / total_s / 1e9


def main() -> None:
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    native = [f for f in ("avx512_bf16", "amx_bf16") if f" {f}" in flags]
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.2f}, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
        f"native bf16: {', '.join(native) or 'none'}, threads {torch.get_num_threads()}"
    )
    fp32, bf16 = gflops(torch.float32), gflops(torch.bfloat16)
    print(f"fp32 {fp32:.1f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s: ratio fp32/bf16 {fp32 / bf16:.1f}x")


if __name__ == "__main__":
    main()
