"""The inference engines evaluation answers with: greedy chat answers from a base model, with or without a LoRA
adapter.

:class:`VllmEngine` is vLLM's offline engine (the engine that serves, in serving's dtype); :class:`TransformersEngine`
is transformers ``generate`` (fp32), the fallback. :func:`make_engine` starts the one an :class:`EvalConfig` names.
The libraries behind them (vLLM, torch, transformers, peft) load only when an engine starts."""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ftops.registry.eval_config import EvalConfig
from ftops.vllm_settings import engine_dtype, vllm_cpu_env

#: The LoRA ranks vLLM accepts as ``max_lora_rank``.
_VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


@dataclass
class Generation:
    """One answer."""

    text: str
    tokens: int
    latency_s: float
    """Wall time of the batch divided by its size: seconds per answer at the batch's throughput."""


class Engine(Protocol):
    """What evaluation needs from an inference engine: greedy chat answers, with or without a LoRA adapter."""

    def chat(self, conversations: list[list[dict]], adapter: Path | None, max_new_tokens: int) -> list[Generation]: ...


class VllmEngine:
    """vLLM's offline engine on a base model with LoRA enabled; one per process (start-up is ~30 s on CPU)."""

    def __init__(
        self,
        base_path: str,
        max_lora_rank: int = 64,
        max_model_len: int = 2048,
        kv_cache_gib: int = 1,
        dtype: str | None = None,
    ):
        os.environ.update(vllm_cpu_env(kv_cache_gib))  # read by vLLM's CPU worker only
        from vllm import LLM  # heavy: vLLM loads only when an engine starts

        self.base_path = base_path
        self.llm = LLM(
            model=base_path,
            enable_lora=True,
            max_lora_rank=max_lora_rank,
            max_loras=2,
            max_model_len=max_model_len,
            dtype=dtype or engine_dtype(),  # serving's default too: the gate judges what is served
            seed=0,
        )
        self._lora_ids: dict[str, int] = {}

    def chat(self, conversations: list[list[dict]], adapter: Path | None, max_new_tokens: int) -> list[Generation]:
        from vllm import SamplingParams  # heavy: vLLM
        from vllm.lora.request import LoRARequest

        lora = None
        if adapter is not None:
            key = str(adapter)
            lora_id = self._lora_ids.setdefault(key, len(self._lora_ids) + 1)
            lora = LoRARequest(f"candidate-{lora_id}", lora_id, key)
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        start = time.perf_counter()
        outputs = self.llm.chat(conversations, params, lora_request=lora, use_tqdm=False)
        per = (time.perf_counter() - start) / max(len(conversations), 1)
        return [Generation(o.outputs[0].text, len(o.outputs[0].token_ids), per) for o in outputs]

    def close(self) -> None:
        """Stop the engine's worker processes now (rather than whenever garbage collection gets to them)."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None:
                core.shutdown()
            del llm
            gc.collect()


class TransformersEngine:
    """transformers ``generate`` on the base (fp32, CPU), with a PEFT adapter attached for the candidate."""

    def __init__(self, base_path: str, batch_size: int = 16):
        import torch  # heavy: torch and transformers load only when an engine starts
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(base_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        self.model.eval()
        self.batch_size = batch_size

    def chat(self, conversations: list[list[dict]], adapter: Path | None, max_new_tokens: int) -> list[Generation]:
        from peft import PeftModel  # heavy: peft pulls torch and transformers

        if adapter is None:
            return self._generate(self.model, conversations, max_new_tokens)
        model = PeftModel.from_pretrained(self.model, str(adapter))
        try:
            return self._generate(model, conversations, max_new_tokens)
        finally:
            self.model = model.unload()  # remove the LoRA layers: the base is the base again

    def _generate(self, model, conversations: list[list[dict]], max_new_tokens: int) -> list[Generation]:
        import torch  # heavy: torch

        out: list[Generation] = []
        for i in range(0, len(conversations), self.batch_size):
            batch = conversations[i : i + self.batch_size]
            texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in batch]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            start = time.perf_counter()
            with torch.no_grad():
                ids = model.generate(
                    **enc,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            per = (time.perf_counter() - start) / len(batch)
            for row in ids[:, enc["input_ids"].shape[1] :]:
                tokens = [t for t in row.tolist() if t != self.tokenizer.pad_token_id]
                out.append(Generation(self.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), per))
        return out


def make_engine(config: EvalConfig, base_path: str, max_lora_rank: int) -> Engine:
    """The engine ``config.engine`` names, for one base model."""
    if config.engine == "vllm":
        rank = next(r for r in _VLLM_LORA_RANKS if r >= max_lora_rank)
        return VllmEngine(base_path, rank, config.max_model_len, config.kv_cache_gib)
    return TransformersEngine(base_path, config.batch_size)
