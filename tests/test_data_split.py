"""Split: exact dedup, then a deterministic 80/10/10 split by content hash that never moves old examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftops.expectations import DataError
from ftops.expectations.demo_data import generate_tickets, write_tickets
from ftops.expectations.split import assign_split, split_file

DATA = Path(__file__).parent / "data"


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_split_is_deterministic_dedups_and_never_moves_old_examples(tmp_path):
    source = write_tickets(tmp_path / "tickets.jsonl", n=300, seed=3)
    first = split_file(source, tmp_path / "a")
    assert set(first) == {"train", "validation", "test"}
    assert {p.name for p in first.values()} == {"train.jsonl", "validation.jsonl", "test.jsonl"}
    splits = {name: read(p) for name, p in first.items()}
    assert sum(map(len, splits.values())) == 300
    assert 0.7 < len(splits["train"]) / 300 < 0.9 and len(splits["validation"]) > 10 and len(splits["test"]) > 10
    assert all(assign_split(ex) == name for name, exs in splits.items() for ex in exs)

    again = split_file(source, tmp_path / "b")
    assert all(again[n].read_bytes() == first[n].read_bytes() for n in first)

    # more examples, shuffled order, and exact duplicates: old examples stay where they were, duplicates go
    grown = generate_tickets(450, seed=3)
    assert grown[:300] == generate_tickets(300, seed=3)  # the generator extends, it does not reshuffle
    lines = [json.dumps(e) for e in grown[::-1]] + [json.dumps(grown[0]), json.dumps(grown[5])]
    (tmp_path / "grown.jsonl").write_text("\n".join(lines) + "\n")
    bigger = {name: read(p) for name, p in split_file(tmp_path / "grown.jsonl", tmp_path / "c").items()}
    assert sum(map(len, bigger.values())) == 450
    where = {json.dumps(e, sort_keys=True): name for name, exs in bigger.items() for e in exs}
    assert all(where[json.dumps(e, sort_keys=True)] == name for name, exs in splits.items() for e in exs)


def test_split_writes_chat_form_from_other_formats(tmp_path):
    paths = split_file(DATA / "clean" / "alpaca.jsonl", tmp_path / "out", format="alpaca")
    examples = [e for p in paths.values() for e in read(p)]
    assert len(examples) == 12
    assert all([m["role"] for m in e["messages"]] == ["user", "assistant"] for e in examples)


def test_split_refuses_an_invalid_file_with_the_first_problem(tmp_path):
    with pytest.raises(DataError, match=r"line 7: unrecognized_role"):
        split_file(DATA / "malformed" / "unrecognized_role.jsonl", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="no such file"):
        split_file(tmp_path / "missing.jsonl", tmp_path / "out")


def test_split_drops_exact_duplicates_instead_of_refusing(tmp_path):
    paths = split_file(DATA / "malformed" / "duplicate_example.jsonl", tmp_path / "out")
    assert sum(len(read(p)) for p in paths.values()) == 11
