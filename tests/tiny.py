"""A tiny random Llama with the real SmolLM2 tokenizer, for tests and benchmarks that must run in seconds.

It has SmolLM2's vocabulary and chat template, so every code path (chat formatting, label masking, LoRA on
q/k/v/o, vLLM's LoRA loader) runs as on the real base; its answers are gibberish, as they should be.

A test helper, not part of the installed package: ``conftest.py`` imports it as a sibling module, and
``bench/serving/load_chaos.py`` with this folder on ``sys.path``. Both import it after setting ``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM


def build_tiny_llama(tokenizer_dir: Path, out: Path, hidden_size: int = 128, layers: int = 2, seed: int = 0) -> Path:
    """Write a random ``LlamaForCausalLM`` (bf16 safetensors) plus the tokenizer of ``tokenizer_dir`` into ``out``."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="bfloat16",
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
