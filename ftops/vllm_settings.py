"""vLLM engine settings that evaluation (``ftops.registry.engines``) and serving (``ftops.serving.engine``) share.

Both run the same engine on the same base: one place decides its dtype, its default context and KV cache, and the
environment vLLM's CPU backend reads at start-up.
"""

from __future__ import annotations

import os
from typing import Literal

from ftops.precision import resolve

EngineDtype = Literal["bfloat16", "float32"]
MAX_MODEL_LEN = 2048
"""Default context length (small on CPU: it sizes the KV cache)."""
KV_CACHE_GIB = 1
"""Default CPU KV cache in GiB: without it vLLM's CPU backend reserves 92% of host memory and refuses to start
beside anything else."""
SMALL_HOST_CORES = 4
"""Up to this many usable cores, ``reserved_cores="auto"`` reserves none."""


def engine_dtype() -> EngineDtype:
    """Weights and activations dtype of the engine, the same for the gate and serving (the gate judges what serving
    serves): ``bfloat16`` on a GPU or a CPU with native bf16, ``float32`` on CPUs that would emulate it
    (:mod:`ftops.precision`; SmolLM2-135M decoded 2.5x faster in float32 than in bfloat16 on an AVX2-only CPU,
    BENCHMARKS.md)."""
    return "bfloat16" if resolve() == "bf16" else "float32"


def vllm_cpu_env(kv_cache_gib: int, reserved_cores: int | str = "auto") -> dict[str, str]:
    """The environment vLLM's CPU engine reads at start-up (the caller's own environment wins).

    ``reserved_cores``: cores vLLM keeps free of its compute threads for its scheduler and front
    (``VLLM_CPU_NUM_OF_RESERVED_CPU``). vLLM's default is one per engine rank, half of a 2-core host; ``auto`` reserves
    none on hosts of at most ``SMALL_HOST_CORES`` cores and leaves vLLM's default above.
    """
    env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib)}
    if reserved_cores == "auto":
        reserved_cores = 0 if len(os.sched_getaffinity(0)) <= SMALL_HOST_CORES else None
    if reserved_cores is not None:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(reserved_cores)
    return {k: os.environ.get(k, v) for k, v in env.items()}
