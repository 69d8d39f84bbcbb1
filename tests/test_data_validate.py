"""The validator: the malformed corpus (one fault each, at the right line with the right code), clean files, the
Great Expectations suite and its report, token limits under the real SmolLM2 tokenizer, and hostile inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftops.expectations.validate import (
    MAX_LINE_BYTES,
    SUITE_PATH,
    ValidationReport,
    load_suite_config,
    save_gx_report,
    validate_file,
)

DATA = Path(__file__).parent / "data"
MALFORMED = json.loads((DATA / "malformed" / "index.json").read_text())
WARNINGS = json.loads((DATA / "warnings" / "index.json").read_text())


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2.path)


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def chat(q: str, a: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": q},
            {"role": "assistant", "content": a},
        ]
    }


CLEAN = [chat(f"What is {i} + {i}?", str(2 * i)) for i in range(12)]


def test_corpus_index_covers_every_file():
    files = {p.name for p in (DATA / "malformed").glob("*.jsonl")}
    assert files == set(MALFORMED) and len(files) >= 25
    openai_codes = {
        "data_type",
        "missing_messages_list",
        "message_missing_key",
        "message_unrecognized_key",
        "unrecognized_role",
        "missing_content",
        "example_missing_assistant_message",
        "invalid_json",
        "invalid_utf8",
        "too_few_examples",
        "duplicate_example",
    }
    assert openai_codes <= {case["code"] for case in MALFORMED.values()}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_file_reports_its_one_fault(name):
    expected = MALFORMED[name]
    report = validate_file(DATA / "malformed" / name)
    assert not report.valid
    assert [(i.line, i.code) for i in report.errors] == [(expected["line"], expected["code"])], report.errors
    message = report.errors[0].message
    assert message and "\n" not in message and len(message) > 20


@pytest.mark.parametrize("name", sorted(WARNINGS))
def test_warning_file_is_valid_and_warns_at_the_line(name):
    expected = WARNINGS[name]
    report = validate_file(DATA / "warnings" / name)
    assert report.valid, report.errors
    assert (expected["line"], expected["code"]) in [(i.line, i.code) for i in report.warnings]


@pytest.mark.parametrize(
    "name,fmt",
    [
        ("chat.jsonl", "chat"),
        ("completion.jsonl", "completion"),
        ("alpaca.jsonl", "alpaca"),
        ("chat_tools_weights.jsonl", "chat"),
    ],
)
def test_clean_files_pass_with_no_errors_or_warnings(name, fmt, tokenizer):
    report = validate_file(DATA / "clean" / name, tokenizer=tokenizer, context_length=8192)
    assert (report.valid, report.errors, report.warnings, report.format) == (True, [], [], fmt)
    assert len(report.examples) == 12
    assert all(ex["messages"][-1]["role"] == "assistant" for ex in report.examples)
    assert report.stats["tokens"]["max"] < 8192


def test_examples_are_normalized_to_chat_form():
    completion = validate_file(DATA / "clean" / "completion.jsonl").examples[0]
    assert completion == {
        "messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]
    }
    alpaca = validate_file(DATA / "clean" / "alpaca.jsonl").examples
    assert alpaca[0]["messages"][0]["content"] == "What is 2 + 2?\n\nAnswer briefly."
    assert alpaca[1]["messages"][0]["content"] == "Name the capital of Italy."  # empty input adds nothing
    tools = validate_file(DATA / "clean" / "chat_tools_weights.jsonl").examples
    assert tools[10]["messages"][2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert tools[10]["tools"][0]["function"]["name"] == "get_weather"
    assert [m.get("weight") for m in tools[11]["messages"]] == [None, None, 0, None, 1]


def test_every_problem_is_reported_in_one_pass(tmp_path):
    records = [json.dumps(r) for r in CLEAN]
    records[1] = '{"messages": [}'
    records[4] = json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]})
    records[6] = json.dumps(CLEAN[0])
    records[9] = json.dumps({"messages": [{"role": "user", "content": "q"}]})
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(records) + "\n")
    report = validate_file(path)
    assert [(i.line, i.code) for i in report.errors] == [
        (2, "invalid_json"),
        (5, "unrecognized_role"),
        (7, "duplicate_example"),
        (10, "example_missing_assistant_message"),
    ]
    assert "line 1" in report.errors[2].message
    assert report.to_json()["examples"] == 9  # 12 lines, 3 structurally broken (the duplicate is still an example)


def test_to_json_has_exactly_the_contract_shape():
    report = validate_file(DATA / "malformed" / "unrecognized_role.jsonl")
    out = report.to_json()
    assert set(out) == {"valid", "examples", "errors", "warnings"}
    assert out["valid"] is False and out["examples"] == 11
    assert out["errors"] == [{"line": 7, "code": "unrecognized_role", "message": report.errors[0].message}]
    json.dumps(out)


def test_forced_format_judges_by_that_format():
    report = validate_file(DATA / "clean" / "chat.jsonl", format="completion")
    assert report.format == "completion"
    assert {i.code for i in report.errors} == {"message_unrecognized_key", "message_missing_key"}
    assert len({i.line for i in report.errors}) == 12


def test_token_limit_says_how_many_tokens_would_be_cut(tmp_path, tokenizer):
    long = chat("Summarize: " + "the cat sat on the mat. " * 40, "A cat sat.")
    path = write_lines(tmp_path / "long.jsonl", CLEAN + [long])
    text = tokenizer.apply_chat_template(long["messages"], tokenize=False)
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    report = validate_file(path, tokenizer=tokenizer, context_length=200)
    assert report.valid
    limits = [i for i in report.warnings if i.code == "token_limit"]
    assert [i.line for i in limits] == [13]
    assert f"{n} tokens" in limits[0].message and f"last {n - 200} tokens would be cut" in limits[0].message
    assert report.stats["tokens"]["max"] == n
    assert not [
        i for i in validate_file(path, tokenizer=tokenizer, context_length=n).warnings if i.code == "token_limit"
    ]


def test_gx_suite_is_versioned_and_every_expectation_maps_to_a_code():
    config = load_suite_config()
    assert config["meta"]["version"] >= 1
    for expectation in config["expectations"]:
        assert expectation["meta"]["code"] and expectation["severity"] in ("critical", "warning")


def test_gx_result_and_data_docs_are_saved(tmp_path):
    report = validate_file(DATA / "malformed" / "duplicate_example.jsonl")
    assert isinstance(report, ValidationReport) and report.gx_result is not None
    results = {r["expectation_config"]["meta"]["code"]: r["success"] for r in report.gx_result["results"]}
    assert results["duplicate_example"] is False and results["too_few_examples"] is True
    assert report.gx_result["suite_name"].startswith(load_suite_config()["name"])
    out = save_gx_report(report, tmp_path / "gx")
    import html as html_lib
    import re

    page = (out / "data_docs.html").read_text()
    text = " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", page)).split())
    assert "Data documentation compiled by Great Expectations" in text
    assert "Values in line and first_line must always be equal" in text and "Status: Failed" in text
    saved = json.loads((out / "validation_result.json").read_text())
    assert saved["success"] is False
    assert json.loads((out / "report.json").read_text())["errors"][0]["code"] == "duplicate_example"
    assert SUITE_PATH.is_file()


# ------------------------------------------------------------------------------------------------ hostile inputs


def only_error(report: ValidationReport) -> str:
    assert not report.valid and len(report.errors) == 1, report.errors
    return report.errors[0].code


def test_missing_path_directory_empty_and_binary(tmp_path):
    assert only_error(validate_file(tmp_path / "nope.jsonl")) == "file_not_found"
    assert only_error(validate_file(tmp_path)) == "not_a_file"
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert only_error(validate_file(tmp_path / "empty.jsonl")) == "empty_file"
    (tmp_path / "blank.jsonl").write_text("\n  \n\n")
    assert only_error(validate_file(tmp_path / "blank.jsonl")) == "empty_file"
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}" + bytes(4096))
    assert only_error(validate_file(tmp_path / "model.safetensors")) == "binary_file"
    (tmp_path / "utf16.jsonl").write_bytes(json.dumps(CLEAN[0]).encode("utf-16"))
    report = validate_file(tmp_path / "utf16.jsonl")
    assert only_error(report) == "binary_file" and "UTF-16" in report.errors[0].message


def test_binary_throughout_is_one_file_error_even_with_line_breaks(tmp_path):
    (tmp_path / "nuls.jsonl").write_bytes((bytes(300) + b"\n") * 20)  # mostly NUL
    assert only_error(validate_file(tmp_path / "nuls.jsonl")) == "binary_file"
    noise = bytes((i * 151 + 7) % 256 for i in range(20_000))  # undecodable throughout, newlines here and there
    (tmp_path / "noise.jsonl").write_bytes(noise)
    assert only_error(validate_file(tmp_path / "noise.jsonl")) == "binary_file"
    (tmp_path / "utf16le.jsonl").write_bytes(b"\n".join(json.dumps(r).encode("utf-16-le") for r in CLEAN))
    assert only_error(validate_file(tmp_path / "utf16le.jsonl")) == "binary_file"


def test_bad_byte_lines_among_good_ones_are_errors_at_their_lines_and_the_rest_is_checked(tmp_path):
    lines = [json.dumps(r).encode() for r in CLEAN]
    lines[2] = bytes(range(0x80, 0x100)) * 4  # 512 bytes of binary noise: over 5% of this small file
    lines[4] = json.dumps(CLEAN[4]).encode().replace(b"4 + 4", b"4 \x00+ 4")  # a raw NUL inside a string
    lines[7] = json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]})
    lines[7] = lines[7].encode()
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = validate_file(path)
    assert [(i.line, i.code) for i in report.errors] == [
        (3, "invalid_utf8"),
        (5, "invalid_json"),
        (8, "unrecognized_role"),
    ]
    assert "byte 1 " in report.errors[0].message and "not valid UTF-8" in report.errors[0].message
    assert "NUL" in report.errors[1].message and f"byte {lines[4].index(0) + 1} " in report.errors[1].message
    assert len(report.examples) == 9 and report.gx_result is not None  # the good lines went through every check


def test_cli_names_the_line_of_a_bad_byte_line_and_exits_1(tmp_path, capsys, ftops_home):
    from ftops.cli import main

    lines = [json.dumps(r).encode() for r in CLEAN]
    lines[5] = b"\xff\xfe\xfd" * 100
    path = tmp_path / "one_bad_line.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert main(["data", "validate", str(path), "--base", "none"]) == 1
    out = capsys.readouterr().out
    assert f"{path}:6: error invalid_utf8: byte 1 of the line is not valid UTF-8" in out
    assert "binary_file" not in out and "INVALID" in out


def test_200mb_single_line_is_one_clear_error(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"messages": [{"role": "user", "content": "')
        block = b"a" * (1 << 20)
        for _ in range(200):
            f.write(block)
        f.write(b'"}]}')  # no final newline
    report = validate_file(path)
    assert only_error(report) == "line_too_long"
    assert report.errors[0].line == 1 and "200 MB" in report.errors[0].message
    assert MAX_LINE_BYTES < 200 * 2**20


def test_huge_line_among_good_ones_does_not_hide_the_rest(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(r).encode() for r in CLEAN]
    lines.insert(3, b"[" * (MAX_LINE_BYTES + 10))
    lines.insert(5, b"[" * 100_000)  # nested deeper than Python's recursion limit
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = validate_file(path)
    assert [(i.line, i.code) for i in report.errors] == [(4, "line_too_long"), (6, "invalid_json")]
    assert len(report.examples) == 12


def test_large_files_count_risky_examples_exactly_and_estimate_the_rest(tmp_path, tokenizer, monkeypatch):
    import ftops.expectations.validate as validate

    long = chat("Summarize: " + "the cat sat on the mat. " * 40, "A cat sat.")
    path = write_lines(tmp_path / "big.jsonl", [chat(f"Question {i}?", f"Answer {i}.") for i in range(60)] + [long])
    exact = validate_file(path, tokenizer=tokenizer, context_length=200)
    monkeypatch.setattr(validate, "EXACT_TOKENS_UP_TO", 10)
    sampled = validate_file(path, tokenizer=tokenizer, context_length=200)
    assert exact.stats["tokens_counted_exactly"] == 61 and 10 <= sampled.stats["tokens_counted_exactly"] <= 12
    assert [(i.line, i.message) for i in sampled.warnings] == [(i.line, i.message) for i in exact.warnings]
    assert [i.line for i in sampled.warnings if i.code == "token_limit"] == [61]
    assert abs(sampled.stats["tokens"]["p50"] - exact.stats["tokens"]["p50"]) <= 3
