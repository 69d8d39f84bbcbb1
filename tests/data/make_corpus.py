"""Regenerate the malformed-file corpus: ``python tests/data/make_corpus.py``.

Every file in ``malformed/`` is a clean dataset with exactly one fault; ``malformed/index.json`` records the line
(1-based, null for the whole file) and the code the validator must report. ``clean/`` holds files that must pass
with no errors and no warnings. The files are committed; this script documents how each was made.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
SYSTEM = "You are a concise assistant."
QA = [
    ("What is 2 + 2?", "4"),
    ("Name the capital of Italy.", "Rome"),
    ("Translate 'thank you' into French.", "Merci"),
    ("Give a synonym for 'quick'.", "Fast"),
    ("What colour is a clear daytime sky?", "Blue"),
    ("How many legs does a spider have?", "Eight"),
    ("Spell 'cat' backwards.", "tac"),
    ("What is the boiling point of water at sea level in Celsius?", "100 degrees"),
    ("Which planet is known as the red planet?", "Mars"),
    ("Write a Python expression for the length of a list x.", "len(x)"),
    ("What is the opposite of 'cold'?", "Hot"),
    ("How many days are in a leap year?", "366"),
]


def chat(q: str, a: str, system: bool = True) -> dict:
    msgs = [{"role": "system", "content": SYSTEM}] if system else []
    return {"messages": msgs + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def lines(records: list) -> list[bytes]:
    return [json.dumps(r).encode() if not isinstance(r, bytes) else r for r in records]


def write(folder: Path, name: str, records: list) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"\n".join(lines(records)) + b"\n")


def replaced(line: int, record) -> list:
    """The clean chat dataset with ``line`` (1-based) replaced by ``record``."""
    out: list = [chat(q, a) for q, a in QA]
    out[line - 1] = record
    return out


def main() -> None:
    clean = HERE / "clean"
    write(clean, "chat.jsonl", [chat(q, a) for q, a in QA])
    write(clean, "completion.jsonl", [{"prompt": q, "completion": a} for q, a in QA])
    write(
        clean,
        "alpaca.jsonl",
        [{"instruction": q, "input": "" if i % 2 else "Answer briefly.", "output": a} for i, (q, a) in enumerate(QA)],
    )
    tool = {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
            {"role": "assistant", "content": "It is 18 C and sunny in Paris."},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
    }
    weighted = {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Say hi."},
            {"role": "assistant", "content": "Hello!!!", "weight": 0},
            {"role": "user", "content": "Politely, please."},
            {"role": "assistant", "content": "Hello, nice to meet you.", "weight": 1},
        ]
    }
    write(clean, "chat_tools_weights.jsonl", [chat(q, a) for q, a in QA[:10]] + [tool, weighted])

    bad = HERE / "malformed"
    index: dict[str, dict] = {}

    def case(name: str, line: int | None, code: str, records: list, note: str) -> None:
        write(bad, name, records)
        index[name] = {"line": line, "code": code, "fault": note}

    ok = [chat(q, a) for q, a in QA]
    case(
        "invalid_json_truncated.jsonl",
        5,
        "invalid_json",
        replaced(5, b'{"messages": [{"role": "user", "content": "hi"}'),
        "line cut off mid-object",
    )
    case(
        "invalid_json_trailing_comma.jsonl",
        3,
        "invalid_json",
        replaced(3, b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},]}'),
        "trailing comma",
    )
    case(
        "invalid_json_single_quotes.jsonl",
        12,
        "invalid_json",
        replaced(12, b"{'messages': [{'role': 'user', 'content': 'a'}]}"),
        "Python dict, not JSON",
    )
    case(
        "invalid_utf8.jsonl",
        7,
        "invalid_utf8",
        replaced(
            7,
            b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "ok"}]}',
        ),
        "latin-1 byte",
    )
    case(
        "invalid_utf8_binary_line.jsonl",
        6,
        "invalid_utf8",
        replaced(6, bytes(range(0x80, 0x100))),
        "a line of bytes that are not UTF-8 at all (binary noise), among good lines",
    )
    case(
        "invalid_json_nul_byte.jsonl",
        9,
        "invalid_json",
        replaced(
            9,
            b'{"messages": [{"role": "user", "content": "hi\x00"}, {"role": "assistant", "content": "ok"}]}',
        ),
        "a raw NUL byte inside a string, among good lines",
    )
    case(
        "data_type_array.jsonl",
        4,
        "data_type",
        replaced(4, [{"role": "user", "content": "hi"}]),
        "a list, not an object",
    )
    case("data_type_string.jsonl", 10, "data_type", replaced(10, "just some text"), "a JSON string")
    case(
        "data_type_message_string.jsonl",
        6,
        "data_type",
        replaced(6, {"messages": ["hello", {"role": "assistant", "content": "hi"}]}),
        "a message that is a string",
    )
    case(
        "missing_messages_list_absent.jsonl",
        2,
        "missing_messages_list",
        replaced(2, {"conversation": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
        "no messages key",
    )
    case(
        "missing_messages_list_empty.jsonl",
        8,
        "missing_messages_list",
        replaced(8, {"messages": []}),
        "empty list",
    )
    case(
        "missing_messages_list_string.jsonl",
        11,
        "missing_messages_list",
        replaced(11, {"messages": "hi there"}),
        "messages is a string",
    )
    case(
        "message_missing_key_role.jsonl",
        3,
        "message_missing_key",
        replaced(3, {"messages": [{"content": "hi"}, {"role": "assistant", "content": "hello"}]}),
        "no role",
    )
    case(
        "message_missing_key_content.jsonl",
        9,
        "message_missing_key",
        replaced(9, {"messages": [{"role": "user"}, {"role": "assistant", "content": "hello"}]}),
        "no content",
    )
    case(
        "message_unrecognized_key.jsonl",
        5,
        "message_unrecognized_key",
        replaced(
            5,
            {
                "messages": [
                    {"role": "user", "content": "hi", "timestamp": 3},
                    {"role": "assistant", "content": "hello"},
                ]
            },
        ),
        "extra key on a message",
    )
    case(
        "unrecognized_role.jsonl",
        7,
        "unrecognized_role",
        replaced(
            7,
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "bot", "content": "hello"},
                    {"role": "assistant", "content": "hello"},
                ]
            },
        ),
        "role bot",
    )
    case(
        "missing_content_empty.jsonl",
        1,
        "missing_content",
        replaced(1, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}),
        "empty assistant content",
    )
    case(
        "missing_content_null.jsonl",
        12,
        "missing_content",
        replaced(12, {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "hello"}]}),
        "null user content",
    )
    case(
        "missing_content_number.jsonl",
        4,
        "missing_content",
        replaced(4, {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": 4}]}),
        "content is a number",
    )
    case(
        "example_missing_assistant_message.jsonl",
        6,
        "example_missing_assistant_message",
        replaced(6, {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]}),
        "no assistant",
    )
    case("duplicate_example.jsonl", 10, "duplicate_example", replaced(10, ok[1]), "line 10 repeats line 2")
    case("too_few_examples.jsonl", None, "too_few_examples", ok[:6], "6 examples")
    case(
        "invalid_weight.jsonl",
        8,
        "invalid_weight",
        replaced(
            8,
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo", "weight": 2},
                ]
            },
        ),
        "weight 2",
    )
    case(
        "completion_missing_key.jsonl",
        4,
        "message_missing_key",
        [{"prompt": q, "completion": a} for q, a in QA[:3]]
        + [{"prompt": "x"}]
        + [{"prompt": q, "completion": a} for q, a in QA[3:]],
        "prompt without completion",
    )
    case(
        "alpaca_missing_content.jsonl",
        9,
        "missing_content",
        [{"instruction": q, "output": a} for q, a in QA[:8]]
        + [{"instruction": "Say hi", "output": ""}]
        + [{"instruction": q, "output": a} for q, a in QA[8:]],
        "empty alpaca output",
    )
    # file-level faults
    (bad / "empty_file.jsonl").write_bytes(b"")
    index["empty_file.jsonl"] = {"line": None, "code": "empty_file", "fault": "zero bytes"}
    (bad / "binary_file.jsonl").write_bytes(bytes(range(256)) * 8)
    index["binary_file.jsonl"] = {"line": None, "code": "binary_file", "fault": "every byte value"}
    # warnings: the file is valid, the warning is expected at the line
    warn = HERE / "warnings"
    windex: dict[str, dict] = {}

    def wcase(name: str, line: int, code: str, records: list, note: str) -> None:
        write(warn, name, records)
        windex[name] = {"line": line, "code": code, "fault": note}

    wcase(
        "near_duplicate.jsonl",
        11,
        "near_duplicate",
        replaced(11, chat("what is 2+2", "4.")),
        "line 1 up to punctuation",
    )
    wcase(
        "missing_system_message.jsonl",
        3,
        "missing_system_message",
        replaced(3, chat(*QA[2], system=False)),
        "no system message",
    )
    wcase(
        "missing_user_message.jsonl",
        5,
        "missing_user_message",
        replaced(
            5,
            {"messages": [{"role": "system", "content": "Greet."}, {"role": "assistant", "content": "Hi!"}]},
        ),
        "no user message",
    )
    wcase(
        "role_order.jsonl",
        9,
        "role_order",
        replaced(
            9,
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "system", "content": SYSTEM},
                    {"role": "assistant", "content": "Hello"},
                ]
            },
        ),
        "system after user",
    )
    wcase(
        "no_loss_tokens.jsonl",
        2,
        "no_loss_tokens",
        replaced(
            2,
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hey", "weight": 0},
                ]
            },
        ),
        "all weights 0",
    )
    wcase(
        "blank_content.jsonl",
        7,
        "blank_content",
        replaced(
            7,
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hey"},
                    {"role": "user", "content": "   "},
                    {"role": "assistant", "content": "Yes?"},
                ]
            },
        ),
        "whitespace-only user turn",
    )
    wcase("blank_line.jsonl", 4, "blank_line", ok[:3] + [b""] + ok[3:], "an empty line in the middle")
    (bad / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    (warn / "index.json").write_text(json.dumps(windex, indent=1) + "\n")


if __name__ == "__main__":
    main()
