"""Retention is measured on items no replay prompt resembles: the regression suite and the replay prompts share no
template, no entity, and no pair of them is similar (word-set Jaccard, numbers masked, below ``SIMILAR``).

Before the families were split, replay trained "Write the word dog in capital letters." and the suite tested
"...cat..."; replay asked "What is the capital of Portugal?" and the suite "...France?": 33 of the 40 suite items had
a replay twin at 0.5 or more, and the demo's retention (1.07) measured recall of rehearsed templates.
"""

from __future__ import annotations

import re

import pytest

from ftops.expectations.regression import load_suite
from ftops.expectations.replay import FAMILIES, SIMILAR, replay_prompts, similarity

SUITE = load_suite()
SUITE_PROMPTS = [item["messages"][-1]["content"] for item in SUITE]
REPLAY = replay_prompts(10_000, exclude=set(SUITE_PROMPTS))  # the whole pool: every prompt replay can train on


def _template_regex(template: str) -> re.Pattern:
    """A template's prompts: each ``{}`` slot matches any text."""
    parts = re.split(r"\{\d*\}", template)
    return re.compile("(.+?)".join(re.escape(p) for p in parts), re.IGNORECASE)


def _terms(text: str) -> list[str]:
    """Lower-cased words and numbers, a final plural "s" dropped (``days`` and ``day`` are one entity)."""
    return [
        w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
        for w in re.findall(r"[a-z]+|\d+", text.lower())
    ]


def _mentions(text: str, entity: str) -> bool:
    """Whether ``entity``'s words occur in ``text``, in order and next to each other."""
    haystack, needle = _terms(text), _terms(entity)
    return bool(needle) and any(haystack[i : i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1))


def test_the_similarity_flags_twins_and_not_unrelated_questions():
    # the measure can fail: the near-twins the suite and replay used to share score at or above the limit
    assert similarity("Write the word cat in capital letters.", "Write the word dog in capital letters.") >= SIMILAR
    assert similarity("What is the capital of France?", "What is the capital of Portugal?") >= SIMILAR
    assert similarity("What is 7 + 5?", "What is 23 + 14?") == 1.0
    assert similarity("What is the capital of France?", "Which continent is Kenya in?") < SIMILAR


def test_no_replay_prompt_resembles_a_suite_item():
    assert len(REPLAY) > 150
    twins = sorted(
        ((round(similarity(s, r), 2), s, r) for s in SUITE_PROMPTS for r in REPLAY if similarity(s, r) >= SIMILAR),
        reverse=True,
    )
    assert not twins, f"{len(twins)} suite x replay pairs at similarity >= {SIMILAR}, e.g. {twins[:5]}"


def test_suite_and_replay_share_no_template():
    for item in SUITE:  # the suite's declared families are true (load_suite checks it too)
        assert item["family"].format(*item["entities"]) == item["messages"][-1]["content"], item["id"]
    replay_templates = {f.template for f in FAMILIES}
    suite_templates = {item["family"] for item in SUITE}
    assert not {t.lower() for t in replay_templates} & {t.lower() for t in suite_templates}
    # either side's templates against the other side's prompts: a template with other slot values is still shared
    shared = [(t, s) for t in replay_templates for s in SUITE_PROMPTS if _template_regex(t).fullmatch(s)]
    shared += [(t, r) for t in suite_templates for r in REPLAY if _template_regex(t).fullmatch(r)]
    assert not shared, f"{len(shared)} prompts in a template of the other side, e.g. {shared[:5]}"


def test_suite_and_replay_share_no_entity():
    numbers = {n for item in SUITE for text in [*item["entities"], item["answer"]] for n in re.findall(r"\d+", text)}
    words = {e for item in SUITE for e in item["entities"] if not e.isdigit()}
    words |= {item["answer"] for item in SUITE if not item["answer"].isdigit()}  # the suite's answers, too
    found = [(w, r) for w in sorted(words) for r in REPLAY if _mentions(r, w)]
    found += [(n, r) for n in sorted(numbers) for r in REPLAY if n in re.findall(r"\d+", r)]
    assert not found, f"{len(found)} replay prompts name a suite entity or answer, e.g. {found[:5]}"

    fillers = {v for f in FAMILIES for values in f.fillers for v in values}
    suite_text = [t for item in SUITE for t in (item["messages"][-1]["content"], item["answer"])]
    found = [(v, t) for v in sorted(fillers) for t in suite_text if _mentions(t, v)]
    assert not found, f"{len(found)} suite items name a replay entity, e.g. {found[:5]}"


@pytest.mark.parametrize("kind", ["facts", "arithmetic", "python", "instruction"])
def test_replay_still_rehearses_every_kind_of_the_suite(kind):
    prompts = [p for f in FAMILIES if f.kind == kind for p in f.prompts()]
    assert len(prompts) >= 20 and len({f.template for f in FAMILIES if f.kind == kind}) >= 3
