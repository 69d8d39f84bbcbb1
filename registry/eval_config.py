"""How to evaluate one run: :class:`EvalConfig`, the options ``ftops eval`` and ``ftops gate`` are built from, and
the LLM judge's default rubric.

Its own module, below engines, judge and the evaluation of a run, which all read it; building the command line's
options needs only this."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ftops.config import StrictConfig
from ftops.vllm_settings import KV_CACHE_GIB, MAX_MODEL_LEN

DEFAULT_RUBRIC = (
    "You grade an assistant's answer against a reference answer. Score 0-10: 10 means it says the same as the "
    "reference (wording may differ), 5 means partly right, 0 means wrong, empty or off-topic. "
    "Reply with the integer score only."
)


class EvalConfig(StrictConfig):
    """How to evaluate one run. ``ftops eval`` and ``ftops gate`` build their options from these fields."""

    engine: Literal["vllm", "transformers"] = "vllm"
    """vllm: batched through vLLM's offline engine (in serving's dtype), the one that serves; transformers: generate
    (fp32), the fallback."""
    max_new_tokens: int = Field(128, ge=1)
    """Greedy decoding stops at EOS or after this many tokens per answer."""
    max_examples: int | None = Field(None, ge=1)
    """Evaluate only the first N held-out examples (none: all)."""
    regression: bool = True
    """Also score candidate and base on the general-skill regression suite (ftops.expectations.regression), giving
    retention."""
    regression_limit: int | None = Field(None, ge=1)
    """Score only the first N regression items (none: all)."""
    format_schema: str | None = None
    """JSON schema for format compliance: a .json file, or 'ticket' for the demo task's
    ``ftops.expectations.demo_data.TICKET_SCHEMA`` (none: derived from the reference answers)."""
    max_model_len: int = Field(MAX_MODEL_LEN, ge=16)
    """vLLM context length (small on CPU: it sizes the KV cache)."""
    kv_cache_gib: int = Field(KV_CACHE_GIB, ge=1)
    """vLLM on CPU: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE, unless set); ignored on a GPU host."""
    batch_size: int = Field(16, ge=1)
    """transformers engine: prompts per generate call."""
    judge_base_url: str | None = None
    """LLM-as-judge: an OpenAI-compatible base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:3000/v1
    (ftops serve); off when none."""
    judge_model: str = "gpt-4o-mini"
    """The judge's model name at that endpoint."""
    judge_api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the judge's API key (``none`` is sent if unset, as local servers accept)."""
    judge_rubric: str = DEFAULT_RUBRIC
    """The judge's system prompt; it must ask for one integer 0-10."""
