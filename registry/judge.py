"""The optional LLM-as-judge: each answer scored 0-10 against its reference on a rubric, by a model behind any
OpenAI-compatible endpoint (``EvalConfig.judge_base_url``; the rubric is ``EvalConfig.judge_rubric``)."""

from __future__ import annotations

import os
import re

from ftops.errors import FtopsError
from ftops.registry.eval_config import EvalConfig


def judge_scores(
    config: EvalConfig, prompts: list[list[dict]], references: list[str], answers: list[str]
) -> list[float]:
    """Score each answer 0-10 with an LLM judge at ``config.judge_base_url`` through the ``openai`` client."""
    import openai  # heavy (about 2 s): only a configured judge needs the client

    client = openai.OpenAI(
        base_url=config.judge_base_url,
        api_key=os.environ.get(config.judge_api_key_env) or "none",
        max_retries=2,
        timeout=60,
    )
    scores = []
    for prompt, ref, answer in zip(prompts, references, answers):
        question = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
        user = f"Question:\n{question}\n\nReference answer:\n{ref}\n\nAssistant's answer:\n{answer}\n\nScore (0-10):"
        try:
            reply = client.chat.completions.create(
                model=config.judge_model,
                temperature=0,
                max_tokens=8,
                messages=[
                    {"role": "system", "content": config.judge_rubric},
                    {"role": "user", "content": user},
                ],
            )
        except openai.OpenAIError as e:
            raise FtopsError(f"LLM judge at {config.judge_base_url}: {type(e).__name__}: {e}") from e
        match = re.search(r"\d+(?:\.\d+)?", reply.choices[0].message.content or "")
        scores.append(min(max(float(match.group()), 0.0), 10.0) if match else 0.0)
    return scores
