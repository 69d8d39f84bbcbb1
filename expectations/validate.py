"""Validate a fine-tuning dataset in one pass: every problem, with its 1-based line, a code and a message a person
can act on.

Two passes, one report:

1. Python reads the file line by line and checks what only code can: the bytes (binary files, UTF-8, 200 MB lines),
   JSON parsing, and the structure of each example in the terms of OpenAI's fine-tuning validator (``data_type``,
   ``missing_messages_list``, ``message_missing_key``, ``message_unrecognized_key``, ``unrecognized_role``,
   ``missing_content``, ``example_missing_assistant_message``). Chat, prompt/completion and alpaca records all
   become chat messages here.
2. The examples are flattened into a table (one row per line: roles, token counts, loss share, duplicate links) and
   Great Expectations runs the versioned suite ``expectations/suites/chat_examples.json`` on it: row count,
   duplicates, near-duplicates, role order and distribution, blank contents, token lengths against the base's
   context, and the share of tokens that carry loss. Each expectation's ``meta.code`` names the issue it raises and
   its ``severity`` says whether it is an error (``critical``) or a warning.

``validate_file`` never raises for bad input: a missing path, a directory, a binary file, an empty file or a 200 MB
line each come back as one error in the report. A line that is not UTF-8 or holds a NUL byte among good lines is
an error at that line (``invalid_utf8``, ``invalid_json``) and the other lines are still checked; ``binary_file``
is for files that are binary throughout (UTF-16, or most of the first 8 KB's lines NUL-bearing or undecodable).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Format = Literal["auto", "chat", "completion", "alpaca"]
FORMATS: tuple[str, ...] = ("auto", "chat", "completion", "alpaca")

#: a line longer than this is not a training example; it is skipped without being read into memory
MAX_LINE_BYTES = 16 * 1024 * 1024
#: OpenAI's minimum
MIN_EXAMPLES = 10
SUITE_PATH = Path(__file__).parent / "suites" / "chat_examples.json"
#: the first bytes of a file that decide whether it is binary throughout (then one ``binary_file`` error)
SAMPLE_BYTES = 8192
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

ROLES = ("system", "user", "assistant", "tool", "function")
MESSAGE_KEYS = ("role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call")
EXAMPLE_KEYS = ("messages", "tools", "functions", "parallel_tool_calls")
COMPLETION_KEYS = ("prompt", "completion")
ALPACA_KEYS = ("instruction", "input", "output")


@dataclass(frozen=True)
class Issue:
    """One problem in the file."""

    line: int | None
    """1-based line of the example, or None for the file as a whole."""
    code: str
    """Stable code: OpenAI's where it has one (``missing_content``), ours otherwise (``invalid_json``)."""
    message: str
    """What is wrong and what to do about it."""

    def to_json(self) -> dict:
        return {"line": self.line, "code": self.code, "message": self.message}

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        return f"{where}: {self.code}: {self.message}"


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_file`."""

    path: str
    format: str
    """The format that was used: the detected one for ``format="auto"``."""
    examples: list[dict] = field(default_factory=list)
    """Every valid example in chat form ``{"messages": [...]}`` in file order (``weight`` kept where given)."""
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    gx_result: dict | None = None
    """The Great Expectations validation result (JSON dict), None when the file could not be read at all."""
    stats: dict = field(default_factory=dict)
    """Figures about the file: lines, examples, token length distribution when a tokenizer was given."""
    _gx_validation: Any = field(default=None, repr=False)

    @property
    def valid(self) -> bool:
        return not self.errors

    def to_json(self) -> dict:
        return {
            "valid": self.valid,
            "examples": len(self.examples),
            "errors": [i.to_json() for i in self.errors],
            "warnings": [i.to_json() for i in self.warnings],
        }


def example_hash(example: dict) -> str:
    """sha256 of an example's content (messages and tools, canonical JSON): equal examples, equal hashes."""
    canon = json.dumps(
        {k: example[k] for k in ("messages", "tools") if k in example},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def fold_text(text: str) -> str:
    """``text`` up to case, whitespace and punctuation: ``"Hello,  World!"`` and ``"hello world"`` fold alike."""
    return " ".join(text.lower().translate(_PUNCT).split())


def _near_key(example: dict) -> str:
    """The text up to case, whitespace and punctuation."""
    parts = []
    for m in example["messages"]:
        text = m.get("content") if isinstance(m.get("content"), str) else json.dumps(m.get("tool_calls"))
        parts.append(m["role"] + ":" + fold_text(str(text)))
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------------- reading


def _file_problem(path: Path) -> Issue | None:
    """One error for a path that cannot be read as a text file at all."""
    if not path.exists():
        return Issue(None, "file_not_found", f"{path}: no such file; check the path")
    if path.is_dir():
        return Issue(None, "not_a_file", f"{path}: is a directory; give a .jsonl file")
    if not path.is_file():
        return Issue(None, "not_a_file", f"{path}: not a regular file; give a .jsonl file")
    try:
        with open(path, "rb") as f:
            sample = f.read(SAMPLE_BYTES)
    except OSError as e:
        return Issue(None, "unreadable_file", f"{path}: cannot be read ({e.strerror}); check its permissions")
    if not sample.strip():
        return Issue(
            None,
            "empty_file",
            f"{path}: the file is empty; it needs one JSON example per line (at least {MIN_EXAMPLES})",
        )
    if _binary_throughout(sample, whole=len(sample) < SAMPLE_BYTES):
        hint = " (UTF-16? save it as UTF-8)" if sample[:2] in UTF16_BOMS else ""
        return Issue(
            None,
            "binary_file",
            f"{path}: a binary file, not UTF-8 JSONL text{hint}; give a file with one JSON example per line",
        )
    return None


def _binary_line(line: bytes, cut: bool = False) -> bool:
    """A line holding a NUL byte, or one of whose bytes more than 1 in 20 are not UTF-8 (one accented Latin-1
    character in a sentence is not binary; random bytes are). ``cut``: the line may end mid-character."""
    if b"\x00" in line:
        return True
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(line, final=not cut)
    return text.count("\ufffd") > len(line) // 20


def _binary_throughout(sample: bytes, whole: bool) -> bool:
    """Whether a file's first bytes (``whole``: the whole file) are binary rather than JSONL text with a few bad
    lines: UTF-16, or most of its non-blank lines binary (see :func:`_binary_line`). A bad line among good ones is
    an error at that line instead, so that it can be found."""
    if sample[:2] in UTF16_BOMS:
        return True
    *complete, last = sample.split(b"\n")
    lines = [line for line in (complete if not whole else [*complete, last]) if line.strip()]
    if not lines:  # one line so far, cut off at the sample's end
        return _binary_line(last, cut=True)
    return sum(map(_binary_line, lines)) * 2 > len(lines)


def _read_lines(path: Path) -> Iterator[tuple[int, bytes | None, int]]:
    """``(line number, bytes or None when longer than MAX_LINE_BYTES, size)``, never holding a huge line."""
    with open(path, "rb") as f:
        number = 0
        while chunk := f.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(chunk) > MAX_LINE_BYTES:
                size = len(chunk)
                while not chunk.endswith(b"\n") and (chunk := f.readline(1 << 20)):
                    size += len(chunk)
                yield number, None, size
            else:
                yield number, chunk, len(chunk)


#: what :func:`_parse_line` returns for a blank line
_BLANK = object()


def _parse_line(line: int, raw: bytes | None, size: int) -> tuple[Any, Issue | None]:
    """``(the JSON record, None)`` of one line from :func:`_read_lines`, ``(None, the error)`` when it cannot be
    parsed, or ``(_BLANK, None)`` when it is blank."""
    if raw is None:
        return None, Issue(
            line,
            "line_too_long",
            f"the line is {size / 2**20:.0f} MB, over the "
            f"{MAX_LINE_BYTES // 2**20} MB limit for one example; is this really JSONL?",
        )
    if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    text, problem = _decode(line, raw)
    if problem is not None:
        return None, problem
    if not text.strip():
        return _BLANK, None
    try:
        return json.loads(text), None
    except (json.JSONDecodeError, RecursionError) as e:
        detail = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else "nested too deeply"
        return None, Issue(
            line,
            "invalid_json",
            f"not valid JSON ({detail}); each line must be one complete JSON object",
        )


def _decode(line: int, raw: bytes) -> tuple[str, Issue | None]:
    """A line's text, or the error at its first byte that is not UTF-8 or is a NUL, whichever comes first."""
    nul = raw.find(b"\x00")
    try:
        text = raw.decode("utf-8")
        bad_utf8 = None
    except UnicodeDecodeError as e:
        text, bad_utf8 = "", e.start
    if bad_utf8 is not None and (nul < 0 or bad_utf8 < nul):
        return "", Issue(
            line,
            "invalid_utf8",
            f"byte {bad_utf8 + 1} of the line is not valid UTF-8 "
            f"({raw[bad_utf8 : bad_utf8 + 4]!r}); re-save the file as UTF-8 or remove the line",
        )
    if nul >= 0:  # JSON text cannot hold a raw NUL (inside a string it is written \u0000)
        return "", Issue(
            line,
            "invalid_json",
            f"byte {nul + 1} of the line is a NUL byte (0x00), which JSON text cannot hold; remove it "
            "(inside a string write \\u0000) or remove the line",
        )
    return text, None


# ---------------------------------------------------------------------------------------------- example structure


def _kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


def _check_chat(record: Any, line: int) -> tuple[dict | None, list[Issue]]:
    """OpenAI's chat checks (its cookbook validator, plus tool calls and weights); the example, or None if invalid."""
    problem = _chat_shape_problem(record, line)
    if problem is not None:
        return None, [problem]
    messages = record["messages"]
    errors = [issue for i, m in enumerate(messages) for issue in _check_message(m, f"messages[{i}]", line)]
    readable = all(isinstance(m, dict) and "role" in m for m in messages)  # else the roles are unknown
    if readable and not any(m["role"] == "assistant" for m in messages):
        errors.append(
            Issue(
                line,
                "example_missing_assistant_message",
                "no assistant message; each example needs at least one assistant answer to learn from",
            )
        )
    warnings = [
        Issue(
            line,
            "example_unrecognized_key",
            f'unknown top-level key "{key}" is ignored (known: {", ".join(EXAMPLE_KEYS)})',
        )
        for key in record
        if key not in EXAMPLE_KEYS
    ]
    if errors:
        return None, errors + warnings
    example: dict = {"messages": [{k: m[k] for k in MESSAGE_KEYS if k in m} for m in messages]}
    example.update({key: record[key] for key in EXAMPLE_KEYS if key != "messages" and key in record})
    return example, warnings


def _chat_shape_problem(record: Any, line: int) -> Issue | None:
    """The one error of a record that is not an object with a non-empty ``messages`` list."""
    if not isinstance(record, dict):
        return Issue(
            line,
            "data_type",
            f'the example is {_kind(record)}; each line must be a JSON object like {{"messages": [...]}}',
        )
    messages = record.get("messages")
    if isinstance(messages, list) and messages:
        return None
    what = "missing" if "messages" not in record else f"{_kind(messages)}" if messages else "empty"
    keys = ", ".join(sorted(record)[:5]) or "none"
    return Issue(
        line,
        "missing_messages_list",
        f'"messages" is {what} (keys: {keys}); each example needs '
        'a non-empty "messages" list (or pass --format for '
        "prompt/completion or alpaca files)",
    )


def _check_message(m: Any, where: str, line: int) -> list[Issue]:
    """The errors of one message ``where`` (``messages[i]``): its type, keys, role, content, tool calls, weight."""
    if not isinstance(m, dict):
        return [
            Issue(line, "data_type", f'{where} is {_kind(m)}; each message must be an object with "role" and "content"')
        ]
    errors: list[Issue] = []
    unknown = [k for k in m if k not in MESSAGE_KEYS]
    if unknown:
        errors.append(
            Issue(
                line,
                "message_unrecognized_key",
                f"{where} has unrecognized key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(MESSAGE_KEYS)}",
            )
        )
    if "role" not in m:
        return [*errors, Issue(line, "message_missing_key", f'{where} has no "role"; add one of {", ".join(ROLES)}')]
    role = m["role"]
    if role not in ROLES:
        return [
            *errors,
            Issue(line, "unrecognized_role", f"{where} has role {json.dumps(role)}; use one of {', '.join(ROLES)}"),
        ]
    if role == "assistant" and (m.get("tool_calls") or m.get("function_call")):
        errors += _check_tool_calls(m, where, line)
    elif "content" not in m:
        return [*errors, Issue(line, "message_missing_key", f'{where} ({role}) has no "content"; add the text')]
    else:
        errors += _check_content(m, role, where, line)
    return errors + _check_weight(m, role, where, line)


def _check_tool_calls(m: dict, where: str, line: int) -> list[Issue]:
    """An assistant message that calls tools: well-formed ``tool_calls``, and a string or null ``content``."""
    errors = []
    if "tool_calls" in m and not (
        isinstance(m["tool_calls"], list)
        and all(
            isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
            for c in m["tool_calls"]
        )
    ):
        errors.append(
            Issue(
                line,
                "invalid_tool_calls",
                f'{where}: "tool_calls" must be a list of '
                '{"id", "type": "function", "function": {"name", "arguments"}} objects',
            )
        )
    content = m.get("content")
    if content is not None and not isinstance(content, str):
        errors.append(
            Issue(
                line,
                "missing_content",
                f'{where}: "content" is {_kind(content)}; it must be a string or null next to tool calls',
            )
        )
    return errors


def _check_content(m: dict, role: str, where: str, line: int) -> list[Issue]:
    """A message other than an assistant's tool call: a non-empty string ``content``; only assistants call tools."""
    if not isinstance(m["content"], str) or not m["content"]:
        what = "empty" if m["content"] == "" else _kind(m["content"])
        return [Issue(line, "missing_content", f'{where} ({role}): "content" is {what}; it must be a non-empty string')]
    if (role in ("user", "system") and m.get("tool_calls")) or (role != "assistant" and m.get("function_call")):
        return [Issue(line, "message_unrecognized_key", f"{where}: only assistant messages carry tool calls")]
    return []


def _check_weight(m: dict, role: str, where: str, line: int) -> list[Issue]:
    """``weight``, where given: 0 or 1, and on assistant messages only."""
    if "weight" not in m:
        return []
    if role != "assistant":
        return [Issue(line, "invalid_weight", f'{where}: "weight" is only allowed on assistant messages, not {role}')]
    if m["weight"] not in (0, 1) or isinstance(m["weight"], bool):
        return [Issue(line, "invalid_weight", f'{where}: "weight" is {json.dumps(m["weight"])}; it must be 0 or 1')]
    return []


def _check_fields(
    record: Any, line: int, required: tuple[str, ...], optional: tuple[str, ...], fmt: str
) -> list[Issue]:
    if not isinstance(record, dict):
        return [
            Issue(
                line,
                "data_type",
                f"the example is {_kind(record)}; each line must be a JSON object with "
                f"{', '.join(repr(k) for k in required)}",
            )
        ]
    issues = []
    for key in record:
        if key not in required + optional:
            issues.append(
                Issue(
                    line,
                    "message_unrecognized_key",
                    f"unrecognized key {key!r} in a {fmt} example; allowed: {', '.join(required + optional)}",
                )
            )
    for key in required + optional:
        if key not in record:
            if key in required:
                issues.append(
                    Issue(
                        line,
                        "message_missing_key",
                        f"missing key {key!r}; a {fmt} example needs {', '.join(repr(k) for k in required)}",
                    )
                )
        elif not isinstance(record[key], str) or (key in required and not record[key]):
            what = "empty" if record[key] == "" else _kind(record[key])
            issues.append(Issue(line, "missing_content", f"{key!r} is {what}; it must be a non-empty string"))
    return issues


def _check_completion(record: Any, line: int) -> tuple[dict | None, list[Issue]]:
    issues = _check_fields(record, line, COMPLETION_KEYS, (), "prompt/completion")
    if issues:
        return None, issues
    return {
        "messages": [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["completion"]},
        ]
    }, []


def _check_alpaca(record: Any, line: int) -> tuple[dict | None, list[Issue]]:
    issues = _check_fields(record, line, ("instruction", "output"), ("input",), "alpaca")
    if issues:
        return None, issues
    prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]}, []


CHECKS = {"chat": _check_chat, "completion": _check_completion, "alpaca": _check_alpaca}


def detect_format(record: Any) -> str | None:
    """The format a parsed record looks like, or None when it says nothing."""
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "chat"
    if "prompt" in record or "completion" in record:
        return "completion"
    if "instruction" in record or "output" in record:
        return "alpaca"
    return None


# ----------------------------------------------------------------------------------------------------------- tokens


#: token counts are exact for every example of a file up to this size; in larger files they are exact for every
#: example that could reach the context and for an even sample of this many, and estimated for the rest
EXACT_TOKENS_UP_TO = 10_000


def _template_text(example: dict, tokenizer: Any) -> str:
    try:
        return tokenizer.apply_chat_template(example["messages"], tools=example.get("tools"), tokenize=False)
    except Exception:  # a template that cannot render tool messages: count the plain contents
        return "\n".join(_text(m) for m in example["messages"])


def _text(message: dict) -> str:
    content = message.get("content")
    return content if isinstance(content, str) and content else json.dumps(message.get("tool_calls"))


def _loses(message: dict) -> bool:
    return message["role"] == "assistant" and message.get("weight", 1) != 0


def _token_counts(examples: list[dict], tokenizer: Any, context_length: int | None) -> tuple[list[int], list[int], int]:
    """Tokens of each example under the tokenizer's chat template, tokens of its assistant messages that carry loss,
    and how many examples were counted exactly (see ``EXACT_TOKENS_UP_TO``; the others are estimated from the
    exactly counted ones' tokens per byte, and could not reach the context)."""
    n = len(examples)
    nbytes = [[len(_text(m).encode("utf-8")) for m in ex["messages"]] for ex in examples]
    if n <= EXACT_TOKENS_UP_TO:
        exact = list(range(n))
    else:
        step = n / EXACT_TOKENS_UP_TO
        chosen = {int(k * step) for k in range(EXACT_TOKENS_UP_TO)}
        # a BPE token is at least one byte: only examples whose bytes (plus template markup) reach the context can
        # be cut, and those are always counted exactly
        limit = (context_length or 0) - 64
        chosen.update(i for i, b in enumerate(nbytes) if sum(b) + 16 * len(b) > limit)
        exact = sorted(chosen)
    encode = getattr(tokenizer, "backend_tokenizer", None)

    def lengths(texts: list[str]) -> list[int]:
        if not texts:
            return []
        if encode is not None:  # the Rust tokenizer directly: no Python objects per token
            return [len(e.ids) for e in encode.encode_batch_fast(texts, add_special_tokens=False)]
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    totals, losses = [0] * n, [0] * n
    for i, length in zip(exact, lengths([_template_text(examples[i], tokenizer) for i in exact]), strict=True):
        totals[i] = length
    owners = [i for i in exact for m in examples[i]["messages"] if _loses(m)]
    answers = [_text(m) for i in exact for m in examples[i]["messages"] if _loses(m)]
    for i, length in zip(owners, lengths(answers), strict=True):
        losses[i] += length + 1  # + the end-of-turn token, which carries loss too
    if len(exact) < n:
        exact_set = set(exact)
        loss_bytes = [sum(b for b, m in zip(nbytes[i], examples[i]["messages"]) if _loses(m)) for i in range(n)]
        a, b = _fit([sum(nbytes[i]) for i in exact], [totals[i] for i in exact])
        la, lb = _fit([loss_bytes[i] for i in exact], [losses[i] for i in exact])
        for i in range(n):
            if i not in exact_set:
                totals[i] = max(1, round(a + b * sum(nbytes[i])))
                losses[i] = max(0, min(totals[i], round(la + lb * loss_bytes[i])))
    return totals, losses, len(exact)


def _fit(xs: list[int], ys: list[int]) -> tuple[float, float]:
    """Least squares ``y = a + b x`` (template overhead + tokens per byte)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0, my / mx if mx else 0.0
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    return my - b * mx, b


def _char_counts(example: dict) -> tuple[int, int]:
    total = loss = 0
    for m in example["messages"]:
        n = len(m.get("content") or "") + len(json.dumps(m["tool_calls"]) if m.get("tool_calls") else "")
        total += n
        if m["role"] == "assistant" and m.get("weight", 1) != 0:
            loss += n
    return total, loss


def _distribution(values: list[int]) -> dict:
    if not values:
        return {}
    s = sorted(values)

    def q(p: float) -> int:
        return s[min(len(s) - 1, int(p * len(s)))]

    return {
        "min": s[0],
        "p50": q(0.5),
        "p90": q(0.9),
        "p99": q(0.99),
        "max": s[-1],
        "mean": round(sum(s) / len(s), 1),
    }


# ----------------------------------------------------------------------------------------------- great expectations


def load_suite_config() -> dict:
    """The versioned expectation suite, as the JSON dict stored in ``expectations/suites/``."""
    return json.loads(SUITE_PATH.read_text())


_GX: dict = {}


def _gx_context():
    """One ephemeral GX context per process (no files, no server, no analytics, no progress bars)."""
    if "context" not in _GX:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        # great_expectations takes seconds to import: only a validation pays for it, not `ftops --help`
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = context.data_sources.add_pandas("ftops_data").add_dataframe_asset("examples")
        _GX.update(context=context, batch=asset.add_batch_definition_whole_dataframe("whole file"), n=0)
    return _GX["context"], _GX["batch"]


def _run_gx(table: dict[str, list], with_tokens: bool, fmt: str):
    """Run the suite on the flattened table; returns the GX ExpectationSuiteValidationResult."""
    import great_expectations as gx  # heavy, lazy: see _gx_context
    import pandas as pd  # heavy too, and only GX needs it

    context, batch = _gx_context()
    config = load_suite_config()
    expectations = [
        e
        for e in config["expectations"]
        if (with_tokens or not e["meta"].get("needs_tokenizer")) and fmt in e["meta"].get("formats", [fmt])
    ]
    _GX["n"] += 1
    suite = gx.ExpectationSuite(
        name=f"{config['name']}_{_GX['n']}",
        expectations=expectations,
        meta={**config["meta"], "suite": config["name"]},
    )
    if len(suite.expectations) != len(expectations):  # GX logs and drops an expectation it cannot build
        raise RuntimeError(f"{SUITE_PATH}: GX accepted {len(suite.expectations)} of {len(expectations)} expectations")
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"validate_{_GX['n']}", data=batch, suite=suite)
    )
    frame = pd.DataFrame(table)
    try:
        result = definition.run(
            batch_parameters={"dataframe": frame},
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": ["line"],
                "partial_unexpected_count": 0,
            },
        )
    finally:
        context.validation_definitions.delete(definition.name)
        context.suites.delete(suite.name)
    for r in result.results:  # numpy scalars -> Python numbers (GX's Data Docs renderer chokes on np.float64)
        for key, value in r.result.items():
            if hasattr(value, "item") and not isinstance(value, (list, dict)):
                r.result[key] = value.item()
    return result


_FIELDS = re.compile(r"{(\w+)")


def _gx_issues(result, table: dict[str, list]) -> tuple[list[Issue], list[Issue]]:
    """Errors and warnings from the failed expectations, at the lines GX reports."""
    errors: list[Issue] = []
    warnings: list[Issue] = []
    row_of = {line: i for i, line in enumerate(table["line"])}
    for r in result.results:
        if r.success:
            continue
        config = r.expectation_config
        code, template = config.meta["code"], config.meta["message"]
        target = errors if str(config.severity).lower().endswith("critical") else warnings
        if r.exception_info and r.exception_info.get("raised_exception"):
            target.append(Issue(None, code, f"the check could not run: {r.exception_info.get('exception_message')}"))
            continue
        rows = r.result.get("unexpected_index_list")
        if rows is None:  # a table-level expectation
            if r.result.get("observed_value") is not None:  # None: no valid example to measure
                target.append(Issue(None, code, template.format(**r.result)))
            continue
        for row in rows:
            line = int(row["line"])
            values = {name: _plain(table[name][row_of[line]]) for name in _FIELDS.findall(template) if name in table}
            target.append(Issue(line, code, template.format(**values)))
    return errors, warnings


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: the table's columns, one row per non-blank line (the suite's ``meta.columns`` says what each holds)
_COLUMNS = (
    "line",
    "roles",
    "n_system",
    "n_user",
    "n_blank",
    "n_tokens",
    "context_length",
    "excess",
    "loss_share",
    "first_line",
    "first_near_line",
)


def _table(records: list[tuple[int, dict | None]], tokenizer: Any, context_length: int | None) -> tuple[dict, dict]:
    """Flatten the examples into the columns the suite reads (see its ``meta.columns``), and the stats."""
    examples = [ex for _, ex in records if ex is not None]
    with_tokens = tokenizer is not None and bool(examples)
    exact = 0
    if with_tokens:
        totals, losses, exact = _token_counts(examples, tokenizer, context_length)
    else:
        counts = [_char_counts(ex) for ex in examples]
        totals, losses = [c[0] for c in counts], [c[1] for c in counts]
    nan = float("nan")
    cols: dict[str, list] = {k: [] for k in _COLUMNS}
    first: dict[str, int] = {}
    first_near: dict[str, int] = {}
    j = 0
    for line, ex in records:
        cols["line"].append(line)
        if ex is None:
            for k in cols:
                if k != "line":
                    cols[k].append(None if k == "roles" else nan)
            continue
        roles = [m["role"] for m in ex["messages"]]
        cols["roles"].append(",".join(roles) + ",")
        cols["n_system"].append(roles.count("system"))
        cols["n_user"].append(roles.count("user"))
        cols["n_blank"].append(_blank_contents(ex))
        total, loss = totals[j], losses[j]
        j += 1
        cols["n_tokens"].append(total if with_tokens else nan)
        cols["context_length"].append(context_length if with_tokens and context_length else nan)
        cols["excess"].append(total - context_length if with_tokens and context_length else nan)
        cols["loss_share"].append(min(1.0, loss / total) if total else 0.0)
        digest = example_hash(ex)
        cols["first_line"].append(first.setdefault(digest, line))
        near = _near_key(ex)
        cols["first_near_line"].append(first_near.setdefault(near, line) if first[digest] == line else nan)
    stats: dict = {"examples": len(examples)}
    if with_tokens:
        stats["tokens"] = _distribution(totals)
        stats["loss_tokens"] = _distribution(losses)
        stats["total_tokens"] = sum(totals)
        stats["tokens_counted_exactly"] = exact
    return cols, stats


def _blank_contents(example: dict) -> int:
    """How many of an example's messages have a content of whitespace only."""
    return sum(
        1
        for m in example["messages"]
        if isinstance(m.get("content"), str) and m["content"] and not m["content"].strip()
    )


# ------------------------------------------------------------------------------------------------------- the entry


def validate_file(
    path: str | os.PathLike, format: Format = "auto", tokenizer: Any = None, context_length: int | None = None
) -> ValidationReport:
    """Check every line of ``path``; see the module docstring. ``tokenizer`` (a Hugging Face tokenizer with a chat
    template) and ``context_length`` enable the token checks (``token_limit`` and the token-based loss share)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    path = Path(path)
    report = ValidationReport(path=str(path), format="chat" if format == "auto" else format)
    problem = _file_problem(path)
    if problem:
        report.errors.append(problem)
        return report
    records, blank_lines, fmt = _check_lines(path, None if format == "auto" else format, report)
    records.sort(key=lambda r: r[0])
    report.errors.sort(key=lambda i: i.line or 0)
    report.warnings.extend(Issue(line, "blank_line", "blank line skipped") for line in blank_lines)
    report.examples = [ex for _, ex in records if ex is not None]
    report.stats = {"lines": len(records) + len(blank_lines)}
    if not records:
        report.errors.append(Issue(None, "empty_file", f"{path}: no examples, only blank lines"))
        return report
    _check_table(report, records, fmt, tokenizer, context_length)
    return report


def _check_lines(
    path: Path, fmt: str | None, report: ValidationReport
) -> tuple[list[tuple[int, dict | None]], list[int], str]:
    """Parse and check every line into ``report``'s errors and warnings; ``fmt`` None: detect it from the first record
    that tells (the records before it wait), and say it in ``report.format``. Returns ``(line, example or None)`` per
    non-blank line, the blank lines, and the format used."""
    pending: list[tuple[int, Any]] = []  # parsed records waiting for the format to be known
    records: list[tuple[int, dict | None]] = []
    blank_lines: list[int] = []
    for line, raw, size in _read_lines(path):
        record, problem = _parse_line(line, raw, size)
        if problem is not None:
            report.errors.append(problem)
            records.append((line, None))
            continue
        if record is _BLANK:
            blank_lines.append(line)
            continue
        if fmt is None:
            fmt = detect_format(record)
            if fmt is None:
                pending.append((line, record))
                continue
            report.format = fmt
            records += [_check_record(fmt, pline, precord, report) for pline, precord in pending]
            pending.clear()
        records.append(_check_record(fmt, line, record, report))
    if fmt is None:  # nothing said which format: judge it as chat, the default
        fmt = "chat"
        records += [_check_record(fmt, pline, precord, report) for pline, precord in pending]
    return records, blank_lines, fmt


def _check_record(fmt: str, line: int, record: Any, report: ValidationReport) -> tuple[int, dict | None]:
    """Check one parsed record in format ``fmt`` into ``report``; ``(line, the chat example or None)``."""
    example, issues = CHECKS[fmt](record, line)
    for issue in issues:
        (report.warnings if issue.code == "example_unrecognized_key" else report.errors).append(issue)
    return line, example


def _check_table(
    report: ValidationReport,
    records: list[tuple[int, dict | None]],
    fmt: str,
    tokenizer: Any,
    context_length: int | None,
) -> None:
    """Run the GX suite on the flattened examples and add its stats, errors and warnings to ``report``."""
    table, stats = _table(records, tokenizer, context_length)
    report.stats.update(stats)
    result = _run_gx(table, with_tokens=tokenizer is not None and context_length is not None, fmt=fmt)
    gx_errors, gx_warnings = _gx_issues(result, table)
    if not report.examples:  # nothing parsed: the line errors say it all, a row count would only repeat them
        gx_errors = [i for i in gx_errors if i.code != "too_few_examples"]
    report.errors.extend(gx_errors)
    report.warnings.extend(gx_warnings)
    report.errors.sort(key=lambda i: i.line or 0)
    report.warnings.sort(key=lambda i: i.line or 0)
    report._gx_validation = result
    report.gx_result = result.to_json_dict()


def save_gx_report(report: ValidationReport, out_dir: str | os.PathLike) -> Path:
    """Write the GX validation result (``validation_result.json``), GX Data Docs HTML (``data_docs.html``) and our
    report (``report.json``) into ``out_dir``; returns the folder. Training logs it to MLflow."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(
        json.dumps(
            {**report.to_json(), "path": report.path, "format": report.format, "stats": report.stats},
            indent=2,
        )
        + "\n"
    )
    if report._gx_validation is None:
        return out
    # heavy, lazy: see _gx_context
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    (out / "validation_result.json").write_text(json.dumps(report.gx_result, indent=2, default=str) + "\n")
    document = ValidationResultsPageRenderer().render(report._gx_validation)
    (out / "data_docs.html").write_text(DefaultJinjaPageView().render(document))
    return out
