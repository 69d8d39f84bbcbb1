"""Replay prompts: general-skill requests to mix into a fine-tuning set, so that the adapter keeps what the base
could do.

A LoRA adapter trained only on one task tends to answer *everything* in that task's shape (the demo adapter answered
"What is 7 + 5?" with a JSON ticket): catastrophic forgetting, which the gate's retention rule catches. The usual
remedy is rehearsal: mix in examples of general behaviour, here the base model's *own* greedy answers to general
prompts (self-distillation, so the target is what the base already does, not new knowledge).
``ftops data replay`` answers these prompts with a base and writes chat JSONL; a training config names it as
``data.replay``.

The prompts are of the same kinds as the regression suite (capitals, arithmetic, general knowledge, Python, following
an instruction) plus open requests, but never one of its items: :func:`replay_prompts` drops any prompt whose text
equals a regression prompt, and a test checks the two sets are disjoint. Deterministic from the seed.
"""

from __future__ import annotations

import random
import re

CAPITALS = (
    "Portugal",
    "Poland",
    "Sweden",
    "Norway",
    "Finland",
    "Denmark",
    "Ireland",
    "Austria",
    "Belgium",
    "the Netherlands",
    "Switzerland",
    "Hungary",
    "Turkey",
    "India",
    "Brazil",
    "Argentina",
    "Mexico",
    "Australia",
    "Kenya",
    "Thailand",
    "South Korea",
    "Peru",
    "Cuba",
    "Morocco",
    "Ukraine",
    "Romania",
    "Indonesia",
    "Vietnam",
    "Chile",
    "Colombia",
)
CAPITAL_FORMS = (
    "What is the capital of {c}?",
    "Which city is the capital of {c}?",
    "Name the capital city of {c}.",
)

ARITHMETIC_FORMS = (
    ("What is {a} + {b}?", lambda a, b: True),
    ("What is {a} plus {b}?", lambda a, b: True),
    ("What is {a} - {b}?", lambda a, b: a > b),
    ("What is {a} minus {b}?", lambda a, b: a > b),
    ("What is {a} times {b}?", lambda a, b: a <= 12 and b <= 12),
    ("What is {a} multiplied by {b}?", lambda a, b: a <= 12 and b <= 12),
    ("What is {a} divided by {b}?", lambda a, b: b > 1 and a % b == 0),
    ("What is double {a}?", lambda a, b: True),
    ("What is half of {a}?", lambda a, b: a % 2 == 0),
)

KNOWLEDGE = (
    "What color is a ripe banana?",
    "What color is snow?",
    "How many legs does a spider have?",
    "How many legs does a dog have?",
    "What is the largest ocean on Earth?",
    "What is the tallest mountain in the world?",
    "Which planet is closest to the Sun?",
    "What is the largest planet in our solar system?",
    "What gas do plants take in from the air?",
    "What do bees make?",
    "What is the freezing point of water in Celsius?",
    "What is the boiling point of water in Celsius?",
    "Who painted the Mona Lisa?",
    "Who wrote Hamlet?",
    "What is the opposite of up?",
    "What is the opposite of big?",
    "What is the opposite of day?",
    "How many months are in a year?",
    "How many hours are in a day?",
    "How many seconds are in a minute?",
    "What is the chemical symbol for gold?",
    "What is the chemical symbol for oxygen?",
    "What animal is known as the king of the jungle?",
    "What is the main language spoken in Brazil?",
    "Which continent is Egypt in?",
    "What is the largest mammal?",
    "What shape has three sides?",
    "What shape has four equal sides?",
    "What do you call a baby cat?",
    "What do you call a baby dog?",
    "What is frozen water called?",
    "What instrument has black and white keys?",
    "What do caterpillars turn into?",
    "Which season comes after winter?",
    "What is the first letter of the English alphabet?",
    "What is the primary source of energy for the Earth?",
    "Which organ pumps blood through the body?",
    "What is the plural of mouse?",
    "What is the past tense of go?",
    "How many days are in a leap year?",
)

PYTHON = (
    "Which Python keyword starts a loop over a sequence?",
    "Which Python keyword starts a conditional statement?",
    "Which Python built-in function converts a string to an integer?",
    "Which Python built-in turns a value into a string?",
    "Write one line of Python that adds 2 and 3 and prints the result.",
    "What does the Python expression 3 ** 2 equal?",
    "Which Python keyword creates a class?",
    "Which Python data type holds key-value pairs?",
    "How do you start a comment in Python?",
    "Which Python method adds an item to the end of a list?",
    "Which Python keyword handles exceptions together with try?",
    "What does len('hello') return in Python?",
    "Write a Python function that returns the square of a number.",
    "Which Python built-in function sorts a list?",
)

INSTRUCTION_FORMS = (
    ("Answer with only the word {w}.", ("no", "maybe", "true", "false", "hello", "done")),
    ("Write the word {w} in capital letters.", ("dog", "sun", "tree", "book", "house", "bird", "milk")),
    ("Repeat this word exactly: {w}", ("apple", "river", "window", "garden", "pencil", "orange", "rocket")),
    ("Reply with just the number {w} as a digit.", ("three", "seven", "nine", "two", "eight", "six")),
    ("Say {w} and nothing else.", ("hi", "thanks", "goodbye", "yes", "ready", "fine")),
)

OPEN = (
    "Give me one tip for sleeping better.",
    "Write one sentence about the ocean.",
    "Explain what a noun is in one sentence.",
    "Suggest a name for a pet goldfish.",
    "Describe a sunny day in one sentence.",
    "What is a good breakfast?",
    "Give me a short piece of advice for a job interview.",
    "Write a short greeting for a birthday card.",
    "Why do people exercise?",
    "What is a computer?",
    "Explain what rain is to a child.",
    "List three fruits.",
    "List three colors.",
    "Name two musical instruments.",
    "What is the purpose of a bridge?",
    "How do I make a cup of tea?",
    "Write a haiku about autumn.",
    "What is friendship?",
    "Give me a fun fact about space.",
    "Summarize what a library is in one sentence.",
    "How can I save money each month?",
    "What should I pack for a day at the beach?",
    "Translate 'thank you' to French.",
    "Translate 'good morning' to Spanish.",
    "What are the three states of matter?",
    "Why is the sky blue?",
)


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def replay_prompts(n: int = 200, seed: int = 0, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """``n`` distinct general prompts (fewer when the pools run out), none equal to one in ``exclude`` (compared
    ignoring case and spacing; pass the regression suite's prompts). Deterministic from ``seed``."""
    rng = random.Random(seed)
    pool: list[str] = [form.format(c=c) for c in CAPITALS for form in CAPITAL_FORMS]
    rng.shuffle(pool)
    pool = pool[: len(CAPITALS) * 2]  # two phrasings per country on average
    arithmetic = []
    while len(arithmetic) < 60:
        form, ok = rng.choice(ARITHMETIC_FORMS)
        a, b = rng.randint(2, 60), rng.randint(2, 30)
        if ok(a, b):
            arithmetic.append(form.format(a=a, b=b))
    pool += arithmetic + list(KNOWLEDGE) + list(PYTHON) + list(OPEN)
    pool += [form.format(w=w) for form, words in INSTRUCTION_FORMS for w in words]
    excluded = {_normalize(e) for e in exclude}
    seen: set[str] = set()
    unique = []
    for prompt in pool:
        key = _normalize(prompt)
        if key not in seen and key not in excluded:
            seen.add(key)
            unique.append(prompt)
    rng.shuffle(unique)
    return unique[:n]
