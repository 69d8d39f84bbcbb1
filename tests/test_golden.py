"""Golden numerics: a tiny model's training losses and a vLLM engine's greedy token ids, pinned as literals.

ftops patches library internals on the paths that produce numbers: TRL's fused LM head (``training/lm_head.py``),
vLLM's CPU LoRA ops and punica wrapper (``ftops/cpu_lora.py``, a ``vllm.general_plugins`` entry point). The other
tests check those patches against references computed in the same process, so a change that moves both sides (a
library upgrade, a patch that stops applying, a changed default) passes them; these tests fail on it.

When a pin fails: find out why the numbers moved before touching them. If the cause is a legitimate change (a
pinned library upgraded in pyproject.toml, a deliberate change to the trainer, the LM head or the LoRA ops, or to
the tiny model in ``tests/tiny.py``), re-record: print the new values (the assertion message shows them), confirm
they are identical over 3 fresh runs (``.venv/bin/python -m pytest -q tests/test_golden.py`` each time), check they
are sane (losses finite and falling, the adapter still answering unlike the base), paste them here and say in the
commit which change moved them. Do not loosen the tolerances: on one machine these numbers are bit-stable.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_trainer

# --- 1. training -------------------------------------------------------------------------------------------------

STEPS = 4
GOLDEN_TRAIN_LOSSES = [10.933419227600098, 10.666986465454102, 10.472091674804688, 10.389569282531738]
"""``loss`` of each optimizer step (1..STEPS), as the Trainer logs it, for the config in :func:`golden_config`."""
GOLDEN_EVAL_LOSS = 10.323904037475586
"""``eval_loss`` on the validation split after the last step."""


def _chat(i: int) -> dict:
    a, b = (i * 7) % 50, (i * 13) % 50
    return {
        "messages": [
            {"role": "user", "content": f"Add {a} and {b}."},
            {"role": "assistant", "content": json.dumps({"sum": a + b})},
        ]
    }


def golden_config(data: dict[str, Path]):
    from ftops.training.config import TrainConfig

    return TrainConfig.model_validate(
        {
            "base": "tiny-llama",
            "data": {k: str(v) for k, v in data.items()},
            "method": "lora",
            "precision": "bf16",  # pinned: the golden losses are bf16's on every machine (auto follows the CPU)
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            "max_steps": STEPS,
            "batch_size": 2,
            "learning_rate": 1e-2,
            "lr_scheduler": "constant",
            "max_seq_length": 128,
            "gradient_checkpointing": False,
            "eval_steps": STEPS,
            "save_steps": 1000,
            "logging_steps": 1,
            "seed": 0,
            "progress": False,
        }
    )


def test_lora_training_losses_match_the_golden_values(tiny_base, tmp_path, monkeypatch):
    """Four bf16 LoRA steps on the tiny random Llama through ftops's trainer (``training/job.py``'s builder), with
    the LM head scoring labelled positions only as in ``ftops train``. Pins the per-step train loss and the final
    validation loss: a changed LM head, loss masking, chat template, LoRA init, optimizer or data order moves them."""
    import torch

    from ftops.training.callbacks import MlflowMetrics
    from ftops.training.lm_head import labelled_positions_only

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # nothing reaches a real store
    data = {}
    for name, (n, offset) in {"train": (16, 0), "validation": (10, 100), "test": (10, 200)}.items():
        data[name] = tmp_path / f"{name}.jsonl"
        data[name].write_text("".join(json.dumps(_chat(i)) + "\n" for i in range(offset, offset + n)))
    trainer, _, _ = tiny_trainer(golden_config(data), tiny_base, data, tmp_path / "out")
    trainer.remove_callback(MlflowMetrics)  # no MLflow run: this test is about the numbers
    with labelled_positions_only():
        trainer.train()

    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    (eval_loss,) = [h["eval_loss"] for h in history if "eval_loss" in h]
    assert len(losses) == STEPS
    torch.testing.assert_close(
        torch.tensor(losses, dtype=torch.float64),
        torch.tensor(GOLDEN_TRAIN_LOSSES, dtype=torch.float64),
        rtol=1e-4,
        atol=1e-5,
        msg=lambda m: f"train losses {losses!r} are not the golden ones: {m}",
    )
    torch.testing.assert_close(
        eval_loss,
        GOLDEN_EVAL_LOSS,
        rtol=1e-4,
        atol=1e-5,
        msg=lambda m: f"eval loss {eval_loss!r} is not the golden one: {m}",
    )


# --- 2. vLLM -----------------------------------------------------------------------------------------------------

PROMPT = [{"role": "user", "content": "Name three colours."}]
NEW_TOKENS = 8
GOLDEN_BASE_IDS = [198] * NEW_TOKENS
"""Greedy token ids of the tiny base for ``PROMPT`` (no adapter), on ftops's gate engine: the random base answers
newlines to every prompt, so its logprobs below carry the pin."""
GOLDEN_BASE_LOGPROBS = {  # by CPU: bf16 matmuls in hardware (AVX512_BF16/AMX, Arm BF16) round otherwise than emulated
    "emulated-bf16": [  # AVX2-only x86 (AMD EPYC, 2026-12-02)
        -9.586113929748535,
        -9.578298568725586,
        -9.570455551147461,
        -9.570428848266602,
        -9.578230857849121,
        -9.58600902557373,
        -9.59381103515625,
        -9.601614952087402,
    ],
    "native-bf16": [  # x86 with AVX512_BF16 (AMD EPYC, 2026-12-04): same token ids, logprobs 1 bf16 step apart
        -9.586124420166016,
        -9.578285217285156,
        -9.578245162963867,
        -9.578252792358398,
        -9.57820987701416,
        -9.586054801940918,
        -9.5938138961792,
        -9.601619720458984,
    ],
}
# x86 with AMX (Intel Xeon, 2026-12-04): the base's logprobs are those of AVX512_BF16, the adapter's differ (below)
GOLDEN_BASE_LOGPROBS["amx-bf16"] = GOLDEN_BASE_LOGPROBS["native-bf16"]
GOLDEN_ADAPTER_IDS = [40375, 20478, 24746, 26115, 12902, 3569, 33259, 38312]
"""The same with the ``make_adapter(tiny_base, ..., seed=1)`` LoRA (tests/test_serving.py)."""
GOLDEN_ADAPTER_LOGPROBS = {
    "emulated-bf16": [
        -9.8907470703125,
        -9.890923500061035,
        -9.843772888183594,
        -9.781902313232422,
        -9.904757499694824,
        -9.932272911071777,
        -9.83608627319336,
        -9.530543327331543,
    ],
    "native-bf16": [
        -9.886881828308105,
        -9.894835472106934,
        -9.847673416137695,
        -9.774056434631348,
        -9.904764175415039,
        -9.932262420654297,
        -9.83220386505127,
        -9.530497550964355,
    ],
    "amx-bf16": [  # 2 of 8 one bf16 step from AVX512_BF16's (the same as the emulated ones there)
        -9.886862754821777,
        -9.89093017578125,
        -9.843788146972656,
        -9.774056434631348,
        -9.904748916625977,
        -9.932265281677246,
        -9.832193374633789,
        -9.530486106872559,
    ],
}


def cpu_kind() -> str:
    """Which golden logprobs apply: bf16 emulated, native with AVX512_BF16, or native with AMX tiles."""
    from ftops.precision import native_bf16

    if not native_bf16():
        return "emulated-bf16"
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text(errors="replace").split() if cpuinfo.exists() else []
    return "amx-bf16" if "amx_bf16" in flags else "native-bf16"


@pytest.fixture(scope="module")
def engine(gate_engine, tiny_base, tmp_path_factory):
    """conftest.py's ``gate_engine`` (ftops's gate engine, ``ftops.registry.engines.VllmEngine``: bf16, LoRA on, seed 0,
    shared with tests/test_cpu_lora.py) on the tiny base, plus one adapter. vLLM runs the model in worker processes
    it starts itself; the test inspects them with ``collective_rpc``, whose function vLLM only pickles with
    VLLM_ALLOW_INSECURE_SERIALIZATION."""
    from test_serving import make_adapter

    adapter = make_adapter(tiny_base, tmp_path_factory.mktemp("golden-adapter") / "adapter", seed=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # as when the engine started
        yield gate_engine, adapter


@pytest.mark.slow
def test_vllm_greedy_token_ids_match_the_golden_values(engine):
    """Greedy decoding on the gate's engine, with the adapter and without, alone and batched together: the base
    and adapter token ids are pinned, and the engine's worker runs ftops's LoRA ops and punica wrapper
    (ftops/cpu_lora.py). Pins vLLM's model, sampler and LoRA numerics on CPU, ftops's ops included."""
    import os

    import torch
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from ftops import cpu_lora

    assert "VLLM_PLUGINS" not in os.environ  # the plugin is not turned off
    gate, adapter = engine

    def probe(worker):  # runs in vLLM's worker process (cloudpickled by value: it is a local function)
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu

        from ftops import cpu_lora

        ops = sorted(
            n
            for n in cpu_lora.OPS
            if getattr(lora_ops, n) is getattr(cpu_lora, n) and getattr(punica_cpu, n) is getattr(cpu_lora, n)
        )
        wrappers = {
            f"{type(w).__module__}.{type(w).__qualname__}"
            for w in (getattr(m, "punica_wrapper", None) for m in worker.get_model().modules())
            if w is not None
        }
        return ops, sorted(wrappers)

    (ops, wrappers), *_ = gate.llm.collective_rpc(probe)
    assert ops == sorted(cpu_lora.OPS)
    assert wrappers == ["ftops.cpu_lora.FtopsPunicaWrapperCPU"]

    lora = LoRARequest("golden", 1, str(adapter))
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, logprobs=0)  # 0: the chosen token's logprob only
    (base_ids, base_lp), (adapter_ids, adapter_lp) = (
        greedy(gate.llm.chat(PROMPT, params, lora_request=r, use_tqdm=False)[0]) for r in (None, lora)
    )
    mixed = [greedy(o)[0] for o in gate.llm.chat([PROMPT, PROMPT], params, lora_request=[lora, None], use_tqdm=False)]
    assert base_ids == GOLDEN_BASE_IDS, f"base token ids {base_ids} are not the golden ones"
    assert adapter_ids == GOLDEN_ADAPTER_IDS, f"adapter token ids {adapter_ids} are not the golden ones"
    # the base answers one token over and over: its logprobs are what a numeric change of the base path moves
    cpu = cpu_kind()  # the ids are the same on every kind
    pins = ((base_lp, GOLDEN_BASE_LOGPROBS[cpu], "base"), (adapter_lp, GOLDEN_ADAPTER_LOGPROBS[cpu], "adapter"))
    for got, want, what in pins:
        torch.testing.assert_close(
            torch.tensor(got, dtype=torch.float64),
            torch.tensor(want, dtype=torch.float64),
            rtol=1e-4,
            atol=1e-5,
            msg=lambda m, got=got, what=what: f"{what} logprobs {got!r} are not the golden ones ({cpu}): {m}",
        )
    assert mixed == [adapter_ids, base_ids]  # one batch: the base row stays base (ftops's fix), the adapter row too


def greedy(output) -> tuple[list[int], list[float]]:
    """Token ids of a ``RequestOutput`` and each one's logprob."""
    (completion,) = output.outputs
    ids = list(completion.token_ids)
    return ids, [step[token].logprob for token, step in zip(ids, completion.logprobs)]
