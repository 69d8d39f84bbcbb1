"""The regression suite: general-skill prompts with checkable answers, to catch catastrophic forgetting.

``expectations/regression_suite.jsonl`` holds 40 items (capitals, arithmetic, general knowledge, simple code,
following an instruction). Retention is a candidate's score over the base model's score on the same items; the
items were chosen so that SmolLM2-135M-Instruct answers a good share of them (see BENCHMARKS.md), which makes that
ratio meaningful.

Each item also names its ``family`` (the prompt's template, ``{}`` for each slot) and the ``entities`` that fill it
(``"What is the capital of {}?"``, ``["France"]``): the replay prompts (``ftops.expectations.replay``) share no
family and no entity with the suite, so retention is measured on items no replay prompt resembles
(``tests/test_retention_families.py``).

Checks:
- ``contains``: the answer appears in the text, ignoring case;
- ``exact``: the text equals the answer, ignoring case, surrounding whitespace, quotes and final punctuation;
- ``number``: the answer appears in the text as a whole number (``12`` matches "3 x 4 = 12." but not "120"),
  written as digits or, up to twenty, as a word.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Literal

SUITE_PATH = Path(__file__).parent / "regression_suite.jsonl"
Check = Literal["contains", "exact", "number"]
CHECKS: tuple[str, ...] = ("contains", "exact", "number")

_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty"
).split()
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w]|\.\d)")


def load_suite(path: str | Path | None = None) -> list[dict]:
    """The items: ``{"id", "messages": [{"role": "user", "content"}], "answer": str, "check": ..., "family": str,
    "entities": [str, ...]}`` (family and entities optional in a suite of your own)."""
    items = []
    source = Path(path) if path else SUITE_PATH
    for n, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        if item.get("check") not in CHECKS or not isinstance(item.get("answer"), str) or not item.get("messages"):
            raise ValueError(f"{source}:{n}: a regression item needs messages, a string answer and check in {CHECKS}")
        if "family" in item and _filled(item) != item["messages"][-1]["content"]:
            raise ValueError(
                f"{source}:{n}: family {item['family']!r} filled with entities {item.get('entities', [])} is not "
                "the item's prompt; make them agree"
            )
        items.append(item)
    return items


def _filled(item: dict) -> str | None:
    """The item's family with its entities in the slots, None when they do not fit."""
    try:
        return str(item["family"]).format(*item.get("entities", []))
    except (IndexError, KeyError, ValueError):
        return None


def _numbers(text: str) -> set[str]:
    found = {
        m.group(0).rstrip("0").rstrip(".") if "." in m.group(0) else m.group(0)
        for m in _NUMBER.finditer(text.replace(",", ""))
    }
    words = re.findall(r"[a-z]+", text.lower())
    found.update(str(_WORDS.index(w)) for w in words if w in _WORDS)
    return found


def score(item: dict, text: str) -> bool:
    """Whether ``text`` (a model's answer) passes ``item``'s check."""
    answer, check = item["answer"], item["check"]
    if check == "contains":
        return answer.lower() in text.lower()
    if check == "exact":
        return text.strip().strip("\"'`").rstrip(".!").strip().lower() == answer.lower()
    if check == "number":
        return answer in _numbers(text)
    raise ValueError(f"unknown check {check!r}; use one of {CHECKS}")


def generate_answers(model_dir: str | Path, items: list[dict], max_new_tokens: int = 48) -> list[str]:
    """Greedy answers of a local Hugging Face model folder (transformers, CPU): the reference for a base's score."""
    # torch and transformers take seconds to import: only a caller that generates pays for them
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    answers = []
    with torch.inference_mode():
        for item in items:
            prompt = tokenizer.apply_chat_template(item["messages"], add_generation_prompt=True, tokenize=False)
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
            answers.append(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return answers


if __name__ == "__main__":  # python -m ftops.expectations.regression MODEL_DIR: the suite score of a model, greedy
    suite = load_suite()
    texts = generate_answers(sys.argv[1], suite)
    passed = [score(item, text) for item, text in zip(suite, texts, strict=True)]
    for item, text, ok in zip(suite, texts, passed, strict=True):
        print(f"{'PASS' if ok else 'fail'} {item['id']:18} {text[:90]!r}")
    print(f"score {sum(passed)}/{len(suite)} = {sum(passed) / len(suite):.3f}")
