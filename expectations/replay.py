"""Replay prompts: general-skill requests to mix into a fine-tuning set, so that the adapter keeps what the base
could do.

A LoRA adapter trained only on one task tends to answer *everything* in that task's shape (the demo adapter answered
"What is 7 + 5?" with a JSON ticket): catastrophic forgetting, which the gate's retention rule catches. The usual
remedy is rehearsal: mix in examples of general behaviour, here the base model's *own* greedy answers to general
prompts (self-distillation, so the target is what the base already does, not new knowledge).
``ftops data replay`` answers these prompts with a base and writes chat JSONL; a training config names it as
``data.replay``.

The prompts are of the same kinds as the regression suite (facts, arithmetic, Python, following an instruction) plus
open requests, but of other *families*: no template and no entity of the suite (its countries, words, numbers,
topics) appears here, so retention is measured on items no replay prompt resembles. Trained on "Write the word dog
in capital letters." and tested on "Write the word cat in capital letters.", an adapter would show a retention it
does not have. ``tests/test_retention_families.py`` checks every suite x replay pair: no shared template (each side's
templates against the other side's prompts), no shared entity, and a word-set similarity (:func:`similarity`) below
:data:`SIMILAR`. Deterministic from the seed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["facts", "arithmetic", "python", "instruction", "open"]


@dataclass(frozen=True)
class Family:
    """Prompts of one shape: ``template`` with its ``{}`` slots filled by each of ``fillers`` (its entities)."""

    kind: Kind
    template: str
    fillers: tuple[tuple[str, ...], ...] = ((),)
    """One tuple of slot values per prompt; ``((),)`` for a template without slots (one fixed prompt)."""

    def prompts(self) -> list[str]:
        return [self.template.format(*f) for f in self.fillers]


def _each(kind: Kind, template: str, *values: str) -> Family:
    return Family(kind, template, tuple((v,) for v in values))


def _fixed(kind: Kind, *prompts: str) -> list[Family]:
    return [Family(kind, p) for p in prompts]


#: operands for arithmetic: from 13 up, none of the regression suite's numbers (a test checks)
OPERANDS = tuple(n for n in range(13, 90) if n not in (15, 20, 27, 42, 50, 60))
#: small factors, none of the suite's either
FACTORS = (8, 9, 11)


def _pairs(step: int, count: int, ok=lambda a, b: True) -> list[tuple[int, int]]:
    """``count`` deterministic operand pairs spread over :data:`OPERANDS`."""
    n = len(OPERANDS)
    pairs = [(OPERANDS[(i * step) % n], OPERANDS[(i * step * 3 + 7) % n]) for i in range(4 * count)]
    return [p for p in pairs if ok(*p)][:count]


def _arithmetic(template: str, pairs: list[tuple[int, int]]) -> Family:
    return Family("arithmetic", template, tuple((str(a), str(b)) for a, b in pairs))


COUNTRIES = (
    "Portugal",
    "Sweden",
    "Norway",
    "Kenya",
    "Brazil",
    "India",
    "Australia",
    "Mexico",
    "Peru",
    "Thailand",
    "Morocco",
    "Chile",
    "Vietnam",
    "Nigeria",
    "Argentina",
    "Poland",
)

FAMILIES: tuple[Family, ...] = (
    # facts: about countries, cities and animals the suite never names, in templates it never uses
    _each("facts", "Which continent is {} in?", *COUNTRIES),
    _each("facts", "What language do most people speak in {}?", *COUNTRIES[::2], "Austria", "Iran"),
    _each("facts", "Name a famous landmark in {}.", "Sydney", "Rio de Janeiro", "Istanbul", "Mumbai", "Amsterdam"),
    _each("facts", "How many legs does {} have?", "a spider", "a horse", "a bird", "an ant", "an octopus"),
    _each("facts", "What sound does {} make?", "a cow", "a duck", "a sheep", "a lion", "an owl", "a frog"),
    _each("facts", "What do you call a baby {}?", "dog", "sheep", "cow", "horse", "goat", "kangaroo"),
    *_fixed(
        "facts",
        "What is the largest ocean on Earth?",
        "What is the tallest mountain in the world?",
        "What gas do plants take in from the air?",
        "What do bees make?",
        "Who painted the Mona Lisa?",
        "What is the largest mammal?",
        "Which shape has three sides?",
        "Which shape has four equal sides?",
        "Which instrument has black and white keys?",
        "What do caterpillars turn into?",
        "Which season comes after winter?",
        "Which letter comes first in the English alphabet?",
        "Which organ pumps blood through the body?",
        "Give the plural form of the word mouse.",
        "Give the past tense of the verb go.",
        "Who was the first person to walk on the Moon?",
        "Which river is the longest in Africa?",
        "Which bird is a symbol of peace?",
    ),
    # arithmetic: imperative and word-problem forms (the suite asks "What is a + b?"), other numbers
    _arithmetic("Add {} and {}.", _pairs(5, 9)),
    _arithmetic("Subtract {1} from {0}.", _pairs(7, 9, lambda a, b: a > b)),
    _arithmetic("Multiply {} by {}.", [(a, FACTORS[i % 3]) for i, (a, _) in enumerate(_pairs(11, 8))]),
    _arithmetic("Tom has {} apples and buys {} more. How many apples does he have now?", _pairs(13, 8)),
    _arithmetic(
        "A box holds {} pencils and {} are taken out. How many pencils are left?",
        _pairs(17, 8, lambda a, b: a > b),
    ),
    _each("arithmetic", "Is {} an even or an odd number?", *(str(n) for n in OPERANDS[1:40:5])),
    _arithmetic("Which number is larger, {} or {}?", _pairs(19, 6, lambda a, b: a != b)),
    # Python: expressions, concepts and how-tos (the suite asks which keyword or built-in does X)
    _each(
        "python",
        "What does the Python expression {} evaluate to?",
        "'py' + 'thon'",
        "'abc'.upper()",
        "bool('')",
        "max(8, 13)",
        "abs(-9)",
        "round(9.8)",
        "'Mississippi'.count('s')",
        "'x'.join('ab')",
    ),
    _each(
        "python",
        "Explain in one sentence what a Python {} is.",
        "dictionary",
        "tuple",
        "set",
        "class",
        "variable",
        "string",
        "decorator",
        "loop",
    ),
    _each(
        "python",
        "Show how to {} in Python.",
        "reverse a string",
        "join two strings with a space",
        "make a dictionary with two keys",
        "check whether a number is even",
        "turn a number into a string",
        "round a number to two decimals",
        "read a text file",
        "swap two variables",
    ),
    # following an instruction: other instructions, other words (the suite: only the word, repeat, capitals...)
    _each(
        "instruction", "Put the word {} in quotation marks.", "river", "window", "garden", "pencil", "rocket", "lamp"
    ),
    _each("instruction", "Give me a word that starts with the letter {}.", "B", "D", "M", "P", "R", "T"),
    _each("instruction", "Give me a word that rhymes with {}.", "light", "cake", "ring", "bell", "moon", "fun"),
    _each("instruction", "Use the word {} in a sentence.", "happy", "quickly", "mountain", "library", "umbrella"),
    _each("instruction", "Describe {} in three words.", "the sea", "a forest", "winter", "a city at night", "a kitten"),
    # open requests
    *_fixed(
        "open",
        "Give me one tip for sleeping better.",
        "Write one sentence about the ocean.",
        "Explain what a noun is in one sentence.",
        "Suggest a name for a pet goldfish.",
        "Describe a sunny afternoon in one sentence.",
        "What is a good breakfast?",
        "Give me a short piece of advice for a job interview.",
        "Write a short greeting for a birthday card.",
        "Why do people exercise?",
        "Explain what a computer is to a child.",
        "Explain what rain is to a child.",
        "Name three fruits.",
        "Name three vegetables.",
        "Name two musical instruments.",
        "What is a bridge for?",
        "How do I make a cup of tea?",
        "Write a haiku about autumn.",
        "What is friendship?",
        "Give me a fun fact about space.",
        "Summarize what a library is in one sentence.",
        "How can I save money each month?",
        "What should I pack for a trip to the beach?",
        "Translate 'thank you' into Portuguese.",
        "Translate 'good night' into Dutch.",
        "What are the three states of matter?",
    ),
)

#: two prompts at or above this :func:`similarity` resemble each other. A prompt and its twin with one word (or
#: number) swapped share all words but one on each side, (n - 1) / (n + 1) for n words: 0.5 for three words, 0.6
#: and up for the suite's prompts (4 to 11 words); the twins replay had before its families were split ("What is
#: the capital of France?" / "...Portugal?", "Write the word cat / dog in capital letters.") score 0.71 and 0.75.
#: Unrelated questions share a few function words ("what is the", "of"): the suite x replay pairs score at most 0.40.
SIMILAR = 0.5

_TOKEN = re.compile(r"[a-z]+|#|[+\-*/%=]")


def words(text: str) -> set[str]:
    """The lower-cased words of ``text``, every number as ``#``, with arithmetic operators kept as words."""
    return set(_TOKEN.findall(re.sub(r"\d+(?:\.\d+)?", "#", text.lower())))


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of the two prompts' :func:`words` (numbers masked, so "What is 7 + 5?" and
    "What is 23 + 14?" are 1.0): shared words over all words, 0 to 1."""
    wa, wb = words(a), words(b)
    return len(wa & wb) / len(wa | wb) if wa or wb else 1.0


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def replay_prompts(n: int = 200, seed: int = 0, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """``n`` distinct general prompts (fewer when the pool runs out), none equal to one in ``exclude`` (compared
    ignoring case and spacing; pass the regression suite's prompts). Deterministic from ``seed``."""
    rng = random.Random(seed)
    excluded = {_normalize(e) for e in exclude}
    seen: set[str] = set()
    unique = []
    for prompt in (p for family in FAMILIES for p in family.prompts()):
        key = _normalize(prompt)
        if key not in seen and key not in excluded:
            seen.add(key)
            unique.append(prompt)
    rng.shuffle(unique)
    return unique[:n]
