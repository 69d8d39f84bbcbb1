"""The compute dtype this machine runs fast: bf16 where the hardware has it, fp32 where bf16 would be emulated.

bf16 halves memory traffic on a GPU or a CPU with native bf16 instructions (x86 AVX512_BF16 or AMX, Arm's BF16
extension). A CPU without them emulates every bf16 matmul: on an AVX2-only AMD EPYC the matmuls of SmolLM2-135M ran
40-100x slower in bf16 than in fp32 (``bench/bench_dtype.py``, BENCHMARKS.md), which turned the demo's 22-minute
training into about 3 hours. Training asks :func:`resolve` and :func:`torch_dtype` (``precision: bf16|fp32`` in a
training config forces one); the vLLM engine of the gate and the service asks ``ftops.vllm_settings.engine_dtype``.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Literal

Precision = Literal["auto", "bf16", "fp32"]
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""x86 ``/proc/cpuinfo`` flags of native bf16 matmuls."""
ARM_BF16_FEATURE = "bf16"
"""The aarch64 ``Features`` entry of the BF16 extension."""


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 natively (``cpuinfo``: the text of ``/proc/cpuinfo``, read when ``None``)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.exists() else ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            words = set(value.split())
            if words & set(CPU_BF16_FLAGS) or ARM_BF16_FEATURE in words:
                return True
    return platform.system() == "Darwin" and platform.machine() == "arm64"  # Apple M2 and later; no cpuinfo there


@functools.cache
def native_bf16() -> bool:
    """Whether the device training runs on (the GPU if there is one, else the CPU) computes bf16 natively."""
    import torch  # heavy: on use only (training configs and the CLI import this module)

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return cpu_has_native_bf16()


def resolve(precision: Precision = "auto") -> Literal["bf16", "fp32"]:
    """``auto`` is bf16 where :func:`native_bf16`, fp32 elsewhere; ``bf16`` and ``fp32`` are kept."""
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


def torch_dtype(precision: Precision = "auto"):
    """:func:`resolve` as a ``torch.dtype``."""
    import torch  # heavy: on use only

    return torch.bfloat16 if resolve(precision) == "bf16" else torch.float32
