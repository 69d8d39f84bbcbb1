"""Replay data from a base's own answers: ``write_replay(base, out)`` answers the general prompts of
``ftops.expectations.replay`` with the base model (greedy, transformers, batched) and writes chat JSONL that a training
config mixes into its training split as ``data.replay``.

Answers cut off by ``max_new_tokens`` are dropped rather than kept truncated (training on them would teach the adapter
to stop mid-sentence). The prompts share no template and no entity with the regression suite's (see
``ftops.expectations.replay``), so retention is still measured on items the adapter did not rehearse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ftops.base import BaseModel
from ftops.errors import FtopsError
from ftops.expectations.regression import load_suite
from ftops.expectations.replay import replay_prompts


@dataclass
class ReplayResult:
    path: Path
    written: int
    dropped: int
    """Answers that hit ``max_new_tokens`` before the end of turn."""


def answer(
    base: BaseModel, prompts: list[str], max_new_tokens: int = 96, batch_size: int = 16, progress: bool = True
) -> list[str | None]:
    """The base's greedy answer to each prompt (a user turn, the base's chat template and default system prompt);
    ``None`` where the answer did not end within ``max_new_tokens``."""
    # heavy: imported on use, so that importing this module (the CLI does) stays fast
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    stops = {
        tokenizer.eos_token_id,
        *([eos] if isinstance(eos, int) else eos or []),
    }  # tokens that end a turn
    answers: list[str | None] = []
    bar = tqdm(total=len(prompts), desc="replay answers", unit="prompt", disable=not progress)
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            texts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
                )
                for p in chunk
            ]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            for row in out[:, batch["input_ids"].shape[1] :].tolist():
                ended = any(t in stops for t in row)
                text = tokenizer.decode(row, skip_special_tokens=True).strip()
                answers.append(text if ended and text else None)
            bar.update(len(chunk))
    bar.close()
    return answers


def prompts_for(n: int = 200, seed: int = 0) -> list[str]:
    """The ``n`` prompts :func:`write_replay` answers (never a regression suite prompt)."""
    exclude = {m["content"] for item in load_suite() for m in item["messages"] if m["role"] == "user"}
    return replay_prompts(n, seed=seed, exclude=exclude)


def write_replay(
    base: BaseModel,
    out: str | Path,
    n: int = 200,
    seed: int = 0,
    max_new_tokens: int = 96,
    progress: bool = True,
) -> ReplayResult:
    """Answer ``n`` replay prompts with ``base`` and write them to ``out`` as chat JSONL."""
    prompts = prompts_for(n, seed)
    answers = answer(base, prompts, max_new_tokens=max_new_tokens, progress=progress)
    rows = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
        for p, a in zip(prompts, answers, strict=True)
        if a is not None
    ]
    if not rows:
        raise FtopsError(
            f"base {base.name!r} finished none of {len(prompts)} answers within {max_new_tokens} "
            "tokens; raise --max-new-tokens"
        )
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    except OSError as e:
        raise FtopsError(f"{path}: cannot write there ({e.strerror}); give a file path in a writable folder") from e
    return ReplayResult(path, len(rows), len(prompts) - len(rows))
