"""ftops/cpu_lora.py: vLLM's CPU LoRA ops give base-model rows the last adapter's delta; ftops's ops do not.

Op-level tests compare against a per-row reference; the engine test runs a real vLLM engine on the tiny base with two
adapters and a base request in one batch.
"""

from __future__ import annotations

import os

import pytest
import torch
from test_serving import make_adapter

from ftops import cpu_lora

SLOTS, RANK, IN, OUTS = 2, 8, 24, (24, 8, 8)  # a qkv-like layer: three output slices


def stacks(gen: torch.Generator, dtype=torch.bfloat16):
    a = tuple(torch.randn(SLOTS, 1, RANK, IN, generator=gen).to(dtype) for _ in OUTS)
    b = tuple(torch.randn(SLOTS, 1, out, RANK, generator=gen).to(dtype) for out in OUTS)
    return a, b


def reference(x, a, b, indices, scale):
    """Per row: nothing for -1, else x @ A[i].T * scale (float32), then @ B[i].T in the output's dtype."""
    y = torch.zeros(x.shape[0], sum(OUTS), dtype=torch.bfloat16)
    for row, slot in enumerate(indices.tolist()):
        if slot < 0:
            continue
        offset = 0
        for a_s, b_s, out in zip(a, b, OUTS, strict=True):
            shrunk = (x[row : row + 1].float() @ a_s[slot, 0].float().T) * scale
            y[row, offset : offset + out] += (shrunk.to(torch.bfloat16) @ b_s[slot, 0].T)[0]
            offset += out
    return y


def wrapper(cls, indices: list[int]):
    from vllm.lora.layers.utils import LoRAMapping

    w = cls(max_num_batched_tokens=64, max_batches=8, device="cpu")
    ids = [slot + 1 if slot >= 0 else 0 for slot in indices]  # LoRA id = slot + 1; id 0 = no adapter
    w.update_metadata(LoRAMapping(tuple(ids), tuple(ids), is_prefill=False), [1, 2], SLOTS, 100)
    return w


@pytest.mark.parametrize("indices", [[0, -1, 1, 0, -1], [1, 1, 1], [-1, -1], [0]], ids=["mixed", "one", "none", "1"])
def test_ops_leave_base_rows_alone_and_match_a_per_row_reference(indices):
    gen = torch.Generator().manual_seed(0)
    a, b = stacks(gen)
    x = torch.randn(len(indices), IN, generator=gen).to(torch.bfloat16)
    idx = torch.tensor(indices)
    expected = reference(x, a, b, idx, 0.5)

    got = torch.zeros_like(expected)
    offset = 0
    for a_s, b_s, out in zip(a, b, OUTS, strict=True):
        buf = torch.zeros(len(indices), RANK, dtype=torch.float32)
        cpu_lora.bgmv_shrink(x, a_s, buf, idx, 0.5)
        cpu_lora.bgmv_expand_slice(buf, b_s, got, idx, offset, out, True)
        offset += out
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
    assert got[idx < 0].abs().sum() == 0  # exactly nothing added to base rows


@pytest.fixture
def registered(monkeypatch):
    """``cpu_lora.register()`` in this process, undone after the test."""
    from vllm.lora.ops import torch_ops
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu
    from vllm.platforms import current_platform

    for module in (lora_ops, torch_ops, punica_cpu):
        for name in cpu_lora.OPS:
            monkeypatch.setattr(module, name, getattr(module, name))
    monkeypatch.setattr(type(current_platform), "get_punica_wrapper", type(current_platform).get_punica_wrapper)
    cpu_lora.register()
    return lora_ops, punica_cpu


@pytest.mark.parametrize(
    "indices",
    [[0, -1, 1, 0, -1], [1, 1, 1], [-1, -1, -1], [0, 0]],
    ids=["mixed", "uniform", "none", "uniform-0"],
)
def test_wrapper_add_lora_linear_matches_the_reference(indices, registered):
    """The wrapper's one-adapter fast path and its mixed fallback (vLLM's path over the registered ops) both equal
    the per-row reference."""
    gen = torch.Generator().manual_seed(1)
    a, b = stacks(gen)
    x = torch.randn(len(indices), IN, generator=gen).to(torch.bfloat16)
    expected = reference(x, a, b, torch.tensor(indices), 2.0)
    y = torch.zeros(len(indices), sum(OUTS), dtype=torch.bfloat16)
    w = wrapper(cpu_lora.FtopsPunicaWrapperCPU, indices)
    assert w._uniform_slot == (indices[0] if len(set(indices)) == 1 else None)
    w.add_lora_linear(y, x, a, b, 2.0, OUTS)
    torch.testing.assert_close(y, expected, rtol=2e-2, atol=2e-2)


def test_vllms_own_ops_give_base_rows_the_last_adapter():
    """The bug this plugin exists for, on the pinned vLLM: if this fails, vLLM fixed it and the ops can go."""
    from vllm.lora.ops.torch_ops import lora_ops

    vllm_shrink = cpu_lora.VLLM_OPS.get("bgmv_shrink", lora_ops.bgmv_shrink)  # vLLM may have loaded the plugin here
    assert vllm_shrink is not cpu_lora.bgmv_shrink
    gen = torch.Generator().manual_seed(2)
    a, _ = stacks(gen)
    x = torch.randn(2, IN, generator=gen).to(torch.bfloat16)
    buf = torch.zeros(2, RANK)
    vllm_shrink(x, a[0], buf, torch.tensor([0, -1]), 1.0)
    assert buf[1].abs().sum() > 0  # the base row got slot 1's A


def test_register_installs_the_ops_and_the_wrapper(registered):
    from vllm.lora.punica_wrapper import punica_selector

    lora_ops, punica_cpu = registered
    cpu_lora.register()  # vLLM may call it more than once per process
    assert all(getattr(m, n) is getattr(cpu_lora, n) for m in (lora_ops, punica_cpu) for n in cpu_lora.OPS)
    w = punica_selector.get_punica_wrapper(max_num_batched_tokens=16, max_batches=4, device="cpu")
    assert type(w) is cpu_lora.FtopsPunicaWrapperCPU


def test_register_refuses_a_vllm_whose_ops_changed(monkeypatch):
    from vllm.lora.ops.torch_ops import lora_ops

    monkeypatch.setattr(lora_ops, "bgmv_shrink", lambda inputs, weights, out: None)
    with pytest.raises(RuntimeError, match="bgmv_shrink.*VLLM_PLUGINS"):
        cpu_lora.register()


def test_plugin_is_an_installed_vllm_entry_point():
    from importlib.metadata import entry_points

    (ep,) = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "ftops_cpu_lora"]
    assert ep.load() is cpu_lora.register


@pytest.mark.slow
def test_real_engine_base_request_beside_two_adapters_answers_as_the_base(gate_engine, tiny_base, tmp_path):
    """A real vLLM engine (conftest.py's ``gate_engine``, the gate's: max_loras=2, both slots taken): a base request
    batched after two adapter requests answers exactly as it does alone, and each adapter answers as it does alone.
    vLLM's own ops gave the base row adapter b."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    assert "VLLM_PLUGINS" not in os.environ
    # LoRA ids and a prompt of this test's own: the engine is shared (tests/test_golden.py pins its prompt's numbers)
    a = LoRARequest("cpu-lora-a", 11, str(make_adapter(tiny_base, tmp_path / "a", 1)))
    b = LoRARequest("cpu-lora-b", 12, str(make_adapter(tiny_base, tmp_path / "b", 2)))
    llm = gate_engine.llm
    params = SamplingParams(max_tokens=12, temperature=0)
    messages = [{"role": "user", "content": "Name three animals."}]
    alone = [llm.chat(messages, params, lora_request=r, use_tqdm=False)[0].outputs[0].token_ids for r in (a, b, None)]
    assert len({tuple(t) for t in alone}) == 3  # the adapters change the answer
    mixed = [
        o.outputs[0].token_ids for o in llm.chat([messages] * 3, params, lora_request=[a, b, None], use_tqdm=False)
    ]
    assert mixed == alone
