"""The demo ticket dataset (deterministic, varied, short, valid under the real SmolLM2 tokenizer) and the
regression suite with its checks."""

from __future__ import annotations

import json
from collections import Counter

import jsonschema
import pytest

from ftops.expectations.demo_data import SYSTEM_PROMPT, TICKET_SCHEMA, generate_tickets, write_tickets
from ftops.expectations.regression import load_suite, score
from ftops.expectations.validate import validate_file


def test_tickets_are_deterministic_valid_short_and_varied(tmp_path, smollm2):
    from transformers import AutoTokenizer

    a = write_tickets(tmp_path / "a.jsonl")
    b = write_tickets(tmp_path / "b.jsonl", n=400, seed=0)
    assert a.read_bytes() == b.read_bytes()
    assert write_tickets(tmp_path / "c.jsonl", seed=1).read_bytes() != a.read_bytes()

    tokenizer = AutoTokenizer.from_pretrained(smollm2.path)
    report = validate_file(a, tokenizer=tokenizer, context_length=smollm2.context_length)
    assert (report.valid, report.errors, report.warnings, len(report.examples)) == (True, [], [], 400)
    tokens = report.stats["tokens"]
    assert 80 <= tokens["min"] and tokens["max"] <= 180 and 110 <= tokens["p50"] <= 150, tokens
    assert len(tokenizer(SYSTEM_PROMPT)["input_ids"]) <= 25

    answers = []
    for example in report.examples:
        system, user, assistant = example["messages"]
        assert system["content"] == SYSTEM_PROMPT
        answer = json.loads(assistant["content"])
        jsonschema.validate(answer, TICKET_SCHEMA)
        if answer["order_id"]:  # the model can read it off the ticket, in any case
            assert answer["order_id"].lower() in user["content"].lower()
        answers.append(answer)
    verbatim = [e["messages"][1]["content"].lower() for e in report.examples]
    named = [(a["product"].lower(), text) for a, text in zip(answers, verbatim, strict=True) if a["product"]]
    # typos may hit the product's words (noise the model must read through), but most tickets name it verbatim
    assert 0.75 < sum(product in text for product, text in named) / len(named) < 1
    for key in ("issue", "action", "sentiment"):
        counts = Counter(a[key] for a in answers)
        assert len(counts) >= 3 and max(counts.values()) < 0.5 * len(answers), (key, counts)
    assert 0.05 < sum(a["order_id"] is None for a in answers) / 400 < 0.3
    assert any(a["product"] is None for a in answers) and any(a["action"] is None for a in answers)
    assert sum(" and a " in e["messages"][1]["content"] for e in report.examples) > 50  # several items
    assert len({e["messages"][1]["content"] for e in report.examples}) == 400


def test_generator_prefix_is_stable():
    assert generate_tickets(50, seed=7) == generate_tickets(80, seed=7)[:50]


def test_regression_suite_shape():
    suite = load_suite()
    assert 35 <= len(suite) <= 50 and len({i["id"] for i in suite}) == len(suite)
    for item in suite:
        assert [m["role"] for m in item["messages"]] == ["user"] and item["check"] in (
            "contains",
            "exact",
            "number",
        )
        assert item["family"].format(*item["entities"]) == item["messages"][0]["content"]  # see test_retention_families
    assert {"cap-france", "math-add", "code-len", "inst-yes"} <= {i["id"] for i in suite}


@pytest.mark.parametrize(
    "check,answer,text,ok",
    [
        ("contains", "Paris", "The capital of France is Paris.", True),
        ("contains", "Paris", "The capital of France is Lyon.", False),
        ("exact", "yes", ' "Yes." ', True),
        ("exact", "yes", "Yes, of course.", False),
        ("number", "12", "3 x 4 = 12.", True),
        ("number", "12", "The answer is 120.", False),
        ("number", "5", "20 divided by 4 is five.", True),
        ("number", "42", "It is 4.2", False),
        ("number", "1000", "1,000 people", True),
    ],
)
def test_score_checks(check, answer, text, ok):
    assert score({"answer": answer, "check": check}, text) is ok
