"""Deterministic 80/10/10 split by content hash, after exact dedup.

An example's split depends only on its own content (the sha256 of its canonical chat JSON): the same example always
lands in the same split, and adding examples to the file never moves the old ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ftops.expectations import DataError
from ftops.expectations.validate import Format, example_hash, validate_file

SPLITS = ("train", "validation", "test")
#: cumulative percentages: hash bucket < 80 -> train, < 90 -> validation, else test
BOUNDS = (80, 90, 100)


def assign_split(example: dict) -> str:
    """``"train"``, ``"validation"`` or ``"test"`` for one chat example, from its content hash alone."""
    bucket = int(example_hash(example)[:16], 16) % 100
    return next(name for name, bound in zip(SPLITS, BOUNDS, strict=True) if bucket < bound)


def split_examples(examples: list[dict]) -> dict[str, list[dict]]:
    """Drop exact duplicates (the first occurrence stays) and split the rest, keeping file order within each split."""
    seen: set[str] = set()
    out: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for example in examples:
        digest = example_hash(example)
        if digest in seen:
            continue
        seen.add(digest)
        out[assign_split(example)].append(example)
    return out


def split_file(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    format: Format = "auto",
    tokenizer=None,
    context_length: int | None = None,
) -> dict[str, Path]:
    """Validate ``path``, dedup it and write ``train.jsonl``, ``validation.jsonl`` and ``test.jsonl`` (chat form) into
    ``out_dir``. Raises :class:`DataError` when the file has errors other than exact duplicates (which are dropped)."""
    report = validate_file(path, format=format, tokenizer=tokenizer, context_length=context_length)
    blocking = [i for i in report.errors if i.code != "duplicate_example"]
    if blocking:
        more = f" (and {len(blocking) - 1} more; run `ftops data validate {path}`)" if len(blocking) > 1 else ""
        raise DataError(f"{path}: cannot split an invalid file: {blocking[0]}{more}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, examples in split_examples(report.examples).items():
        target = out / f"{name}.jsonl"
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for example in examples:
                f.write(json.dumps(example, ensure_ascii=False) + "\n")
        tmp.replace(target)
        paths[name] = target
    return paths
