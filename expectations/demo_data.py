"""The demo dataset: customer support tickets and the JSON a model must extract from them.

Deterministic from the seed and varied enough that a model has to read the ticket: a dozen phrasing templates, several
items in one ticket (only one is the subject), order ids written several ways or missing, a requested action or none,
tone that sets the sentiment, typos, lower-case and signature noise. Examples are short (about 120-170 tokens under the
SmolLM2 tokenizer, system prompt included) so that the demo trains in minutes on a CPU.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

SYSTEM_PROMPT = "Extract the support ticket as JSON with keys order_id, product, issue, action, sentiment."

ISSUES = ("damaged", "late", "wrong_item", "missing_item", "defective", "billing")
ACTIONS = ("refund", "replacement", "cancel", "track", "invoice")
SENTIMENTS = ("negative", "neutral", "positive")

#: JSON schema of the assistant's answer
TICKET_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "SupportTicket",
    "type": "object",
    "properties": {
        "order_id": {
            "type": ["string", "null"],
            "pattern": "^[A-Z]-[0-9]{5}$",
            "description": "the order id, normalized to e.g. A-10234; null when the ticket gives none",
        },
        "product": {
            "type": ["string", "null"],
            "description": "the item the ticket is about; null when unnamed",
        },
        "issue": {"enum": list(ISSUES)},
        "action": {
            "enum": [*ACTIONS, None],
            "description": "what the customer asks for; null when they ask nothing",
        },
        "sentiment": {"enum": list(SENTIMENTS)},
    },
    "required": ["order_id", "product", "issue", "action", "sentiment"],
    "additionalProperties": False,
}

PRODUCTS = (
    "kettle",
    "desk lamp",
    "yoga mat",
    "coffee grinder",
    "backpack",
    "phone case",
    "water bottle",
    "toaster",
    "wool scarf",
    "office chair",
    "blender",
    "headphones",
    "keyboard",
    "frying pan",
    "bath towel",
    "wall clock",
    "running shoes",
    "tea set",
    "monitor stand",
    "rain jacket",
    "bike light",
    "cutting board",
    "pillow",
    "mixer",
)
COLORS = ("blue", "black", "white", "red", "green", "grey", "pink", "steel", "oak", "yellow")

ISSUE_PHRASES = {
    "damaged": (
        "the {p} arrived broken",
        "the {p} came cracked",
        "my {p} was smashed in the box",
        "the {p} is dented and scratched",
    ),
    "late": (
        "the {p} still hasn't arrived",
        "my {p} is two weeks late",
        "the {p} was due last Monday, nothing yet",
        "where is my {p}? it is very late",
    ),
    "wrong_item": (
        "I got the wrong {p}",
        "you sent me a {p} I never ordered",
        "the {p} in the box is not what I bought",
        "wrong size and colour for the {p}",
    ),
    "missing_item": (
        "the {p} was missing from the parcel",
        "the box came without the {p}",
        "everything arrived except the {p}",
        "no {p} in the package",
    ),
    "defective": (
        "the {p} stopped working after a day",
        "the {p} won't turn on",
        "the {p} is faulty",
        "my {p} makes a weird noise and fails",
    ),
    "billing": (
        "I was charged twice for the {p}",
        "the price of the {p} on my card is wrong",
        "you billed me for the {p} after I returned it",
        "double payment for the {p}",
    ),
}
ACTION_PHRASES = {
    "refund": ("I want my money back.", "Please refund me.", "Refund please.", "I'd like a full refund."),
    "replacement": (
        "Please send a new one.",
        "Can I get a replacement?",
        "Swap it for a working one please.",
        "I need a replacement asap.",
    ),
    "cancel": ("Cancel the order.", "Please cancel it.", "Just cancel everything.", "I want to cancel."),
    "track": (
        "Where is it now?",
        "Can you send me the tracking?",
        "Please check the delivery status.",
        "Tell me when it will arrive.",
    ),
    "invoice": (
        "Send me a corrected invoice.",
        "I need an invoice for this.",
        "Please fix the invoice.",
        "Can you email the receipt?",
    ),
}
TONES = {
    "negative": ("This is unacceptable!", "Really disappointed.", "Worst service ever.", "I'm furious."),
    "neutral": ("", "Let me know.", "Regards.", "See details above."),
    "positive": (
        "Thanks so much!",
        "Love your shop otherwise :)",
        "Appreciate the help!",
        "You're usually great, thanks.",
    ),
}
GREETINGS = ("Hi,", "Hello,", "Hey there,", "Good morning,", "", "Dear support,")
SIGNATURES = ("", "", "", "- Sam", "Sent from my phone", "Thanks, Alex", "-- J. Lee")
DETAILS = (
    "I bought it as a gift for my mum's birthday.",
    "Ordered it on the 3rd with express shipping.",
    "This is my second message about this.",
    "I have been a customer for years.",
    "The courier left it at the door.",
    "I need it for a trip this weekend.",
    "My neighbour signed for the parcel.",
    "I checked the app twice already.",
    "Photos attached.",
    "It was on sale last week.",
    "The box itself looked fine.",
    "I paid with PayPal.",
)
ORDER_FORMS = ("order {o}", "order #{o}", "({o})", "order no. {o}", "my order {o}")


def _order_id(rng: random.Random) -> str:
    return f"{rng.choice('ABCDEFGHKMPRT')}-{rng.randint(10000, 99999)}"


def _typo(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    i = rng.randrange(len(words))
    w = words[i]
    if len(w) > 3 and w.isalpha():
        j = rng.randrange(len(w) - 1)
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


def make_ticket(rng: random.Random) -> tuple[str, dict]:
    """One ticket text and the answer a model must extract from it."""
    issue = rng.choice(ISSUES)
    action = None if rng.random() < 0.15 else rng.choice(ACTIONS)
    sentiment = rng.choice(SENTIMENTS)
    product = rng.choice(PRODUCTS)
    named = f"{rng.choice(COLORS)} {product}" if rng.random() < 0.5 else product
    several = rng.random() < 0.35
    if not several and rng.random() < 0.1:  # the ticket does not name the item
        product, named = None, rng.choice(("item", "thing", "package contents"))
    order = _order_id(rng) if rng.random() < 0.85 else None
    problem = rng.choice(ISSUE_PHRASES[issue]).format(p=named)
    parts = [rng.choice(GREETINGS)]
    if several:  # several items: only one is the subject
        other = rng.choice([p for p in PRODUCTS if p != product])
        parts.append(f"I ordered a {named} and a {other}. The {other} is fine but {problem}.")
    else:
        parts.append(f"{problem[0].upper()}{problem[1:]}.")
    if order:
        form = rng.choice(ORDER_FORMS).format(o=order if rng.random() < 0.8 else order.lower())
        parts.insert(rng.choice((1, 2)), f"About {form}:" if rng.random() < 0.5 else f"Re {form}.")
    for p in (0.85, 0.35):
        if rng.random() < p:
            parts.insert(rng.randint(2, len(parts)), rng.choice(DETAILS))
    if action:
        parts.append(rng.choice(ACTION_PHRASES[action]))
    parts.append(rng.choice(TONES[sentiment]))
    parts.append(rng.choice(SIGNATURES))
    text = " ".join(p for p in parts if p)
    for _ in range(rng.choice((0, 0, 1, 2))):
        text = _typo(text, rng)
    if rng.random() < 0.15:
        text = text.lower()
    answer = {
        "order_id": order,
        "product": named if product else None,
        "issue": issue,
        "action": action,
        "sentiment": sentiment,
    }
    return text, answer


def ticket_example(text: str, answer: dict) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": text},
            {"role": "assistant", "content": json.dumps(answer)},
        ]
    }


def generate_tickets(n: int = 400, seed: int = 0) -> list[dict]:
    """``n`` distinct chat examples; the first ``k`` are the same for any ``n >= k`` and the same seed."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out = []
    while len(out) < n:
        text, answer = make_ticket(rng)
        if text in seen:
            continue
        seen.add(text)
        out.append(ticket_example(text, answer))
    return out


def write_tickets(path: str | os.PathLike, n: int = 400, seed: int = 0) -> Path:
    """Write the demo dataset as chat JSONL to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for example in generate_tickets(n, seed):
            f.write(json.dumps(example, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
