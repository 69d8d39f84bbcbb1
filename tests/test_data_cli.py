"""``ftops data validate|split|generate`` through the real CLI entry point: exit codes, the --json contract, and one
clear line (never a traceback) for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftops.cli import main

DATA = Path(__file__).parent / "data"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_validate_clean_file_exits_0_with_the_default_base(capsys, ftops_home, smollm2):
    code, out, err = run(capsys, "data", "validate", str(DATA / "clean" / "chat.jsonl"))
    assert code == 0, (out, err)
    assert "valid (chat): 12 usable examples, 0 errors, 0 warnings, tokens per example p50" in out


def test_validate_json_contract_and_exit_1(capsys, ftops_home):
    path = DATA / "malformed" / "missing_content_null.jsonl"
    code, out, _ = run(capsys, "data", "validate", str(path), "--json", "--base", "none")
    assert code == 1
    report = json.loads(out)
    assert report == {
        "valid": False,
        "examples": 11,
        "warnings": [],
        "errors": [{"line": 12, "code": "missing_content", "message": report["errors"][0]["message"]}],
    }


def test_validate_text_output_names_file_line_and_code(capsys, ftops_home, tmp_path):
    code, out, _ = run(
        capsys,
        "data",
        "validate",
        str(DATA / "malformed" / "invalid_utf8.jsonl"),
        "--base",
        "none",
        "--report-dir",
        str(tmp_path / "gx"),
    )
    assert code == 1
    assert f"{DATA / 'malformed' / 'invalid_utf8.jsonl'}:7: error invalid_utf8: byte" in out
    assert (tmp_path / "gx" / "data_docs.html").is_file() and (tmp_path / "gx" / "validation_result.json").is_file()


@pytest.mark.parametrize(
    "make,code_name",
    [
        (lambda d: d / "missing.jsonl", "file_not_found"),
        (lambda d: d, "not_a_file"),
        (lambda d: (d / "e.jsonl", (d / "e.jsonl").write_bytes(b""))[0], "empty_file"),
        (lambda d: (d / "b.bin", (d / "b.bin").write_bytes(bytes(range(256)) * 4))[0], "binary_file"),
    ],
)
def test_hostile_paths_give_one_error_line(capsys, ftops_home, tmp_path, make, code_name):
    code, out, err = run(capsys, "data", "validate", str(make(tmp_path)), "--base", "none")
    assert code == 1 and "Traceback" not in out + err
    errors = [line for line in out.splitlines() if " error " in line]
    assert len(errors) == 1 and f"error {code_name}:" in errors[0]


def test_usage_errors_exit_2(capsys, ftops_home):
    with pytest.raises(SystemExit) as e:
        main(["data", "validate", "x.jsonl", "--format", "csv"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["data", "split", "x.jsonl"])  # --out is required
    assert e.value.code == 2


def test_unknown_base_is_one_clear_error(capsys, ftops_home):
    code, out, err = run(capsys, "data", "validate", str(DATA / "clean" / "chat.jsonl"), "--base", "nope")
    assert code == 1 and "base model 'nope' is not imported" in err and "Traceback" not in err


def test_generate_then_split(capsys, ftops_home, tmp_path):
    code, out, _ = run(capsys, "data", "generate", str(tmp_path / "t.jsonl"), "-n", "60", "--seed", "2")
    assert code == 0 and "wrote 60" in out
    code, out, _ = run(
        capsys,
        "data",
        "split",
        str(tmp_path / "t.jsonl"),
        "--out",
        str(tmp_path / "s"),
        "--json",
        "--base",
        "none",
    )
    assert code == 0
    counts = {name: v["examples"] for name, v in json.loads(out).items()}
    assert set(counts) == {"train", "validation", "test"} and sum(counts.values()) == 60


def test_split_of_invalid_file_and_unwritable_targets_exit_1(capsys, ftops_home, tmp_path):
    code, _, err = run(
        capsys,
        "data",
        "split",
        str(DATA / "malformed" / "invalid_json_truncated.jsonl"),
        "--out",
        str(tmp_path / "s"),
        "--base",
        "none",
    )
    assert code == 1 and "line 5: invalid_json" in err and len(err.strip().splitlines()) == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(
        capsys, "data", "split", str(DATA / "clean" / "chat.jsonl"), "--out", str(blocker), "--base", "none"
    )
    assert code == 1 and "cannot write the splits" in err
    code, _, err = run(capsys, "data", "generate", str(tmp_path), "-n", "5")
    assert code == 1 and "cannot write there" in err
    code, _, err = run(capsys, "data", "generate", str(tmp_path / "x.jsonl"), "-n", "0")
    assert code == 1 and "-n must be at least 1" in err
