"""``ftops data validate|split|generate|replay``: the CLI glue around ``expectations/``.

``expectations`` imports nothing of ours; this module resolves the tokenizer and context length it needs from an
imported base model (``--base NAME``, default SmolLM2-135M-Instruct when imported).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from ftops.base import list_bases, load_base
from ftops.errors import FtopsError, UsageError
from ftops.expectations import DataError
from ftops.expectations.demo_data import write_tickets
from ftops.expectations.split import split_file
from ftops.expectations.validate import save_gx_report, validate_file
from ftops.training.replay import write_replay

DEFAULT_BASE = "smollm2-135m-instruct"
#: warnings of one code printed in the text output before "... and N more" (--json prints all)
SHOWN_PER_CODE = 5


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="validate, split, generate and replay training data",
        description="Training data: validate a JSONL file, dedup and split it, write the demo dataset, write "
        "replay examples from a base model.",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    _add_validate(dsub)
    _add_split(dsub)
    _add_generate(dsub)
    _add_replay(dsub)


def _add_validate(dsub: argparse._SubParsersAction) -> None:
    v = dsub.add_parser(
        "validate",
        help="report every problem of a dataset in one pass",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Check every line of PATH and report each problem with its line, a code (OpenAI's fine-tuning codes where it has one)
and what to do. Dataset-level checks (counts, duplicates, role order, token lengths, loss share) run as a Great
Expectations suite. Exit 0 when valid, 1 when not.

examples:
  ftops data validate data/tickets.jsonl
  ftops data validate train.jsonl --format alpaca --json""",
    )
    v.add_argument("path", help="a JSONL file: chat (messages), prompt/completion, or alpaca")
    _common(v)
    v.add_argument(
        "--json",
        action="store_true",
        help='print {"valid", "examples", "errors": [{"line", "code", "message"}], "warnings"}',
    )
    v.add_argument("--report-dir", metavar="DIR", help="also save the GX validation result and Data Docs HTML into DIR")
    v.set_defaults(func=_validate)


def _add_split(dsub: argparse._SubParsersAction) -> None:
    s = dsub.add_parser(
        "split",
        help="dedup and split 80/10/10 by content hash",
        description="Validate PATH, drop exact duplicates, and write train.jsonl, validation.jsonl "
        "and test.jsonl (chat form) into --out. The split of an example depends only on "
        "its content: adding examples never moves old ones.",
    )
    s.add_argument("path")
    s.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _common(s)
    s.add_argument("--json", action="store_true", help="print the files and their counts as JSON")
    s.set_defaults(func=_split)


def _add_generate(dsub: argparse._SubParsersAction) -> None:
    g = dsub.add_parser(
        "generate",
        help="write the demo support-ticket dataset",
        description="Write the deterministic demo dataset (support tickets -> JSON) as chat JSONL.",
    )
    g.add_argument("path", help="output .jsonl file")
    g.add_argument("-n", type=int, default=400, help="number of examples (default 400)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.set_defaults(func=_generate)


def _add_replay(dsub: argparse._SubParsersAction) -> None:
    r = dsub.add_parser(
        "replay",
        help="write general-skill examples answered by the base model (rehearsal against forgetting)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Answer N general prompts (capitals, arithmetic, facts, Python, short instructions, open requests; never one of the
regression suite's) with the base model's own greedy answers and write them as chat JSONL. A training config mixes
them into its training split as `data.replay: PATH`, so that the adapter keeps answering general questions the way
the base did instead of in the fine-tuned task's shape (the gate's retention rule). Answers that do not end within
--max-new-tokens are dropped. Takes a few minutes on a CPU for the default 160 prompts.

examples:
  ftops data replay .ftops/data/replay.jsonl
  ftops data replay replay.jsonl --base my-base -n 400""",
    )
    r.add_argument("path", help="output .jsonl file")
    r.add_argument("--base", default=DEFAULT_BASE, help=f"imported base model that answers (default {DEFAULT_BASE})")
    r.add_argument("-n", type=int, default=160, help="number of prompts to answer (default 160, at most 232)")
    r.add_argument("--seed", type=int, default=0, help="random seed of the prompt choice (default 0)")
    r.add_argument(
        "--max-new-tokens",
        type=int,
        default=96,
        metavar="N",
        help="longest answer kept, in tokens (default 96)",
    )
    r.set_defaults(func=_replay)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        choices=("auto", "chat", "completion", "alpaca"),
        default="auto",
        help="file format (default: detect)",
    )
    p.add_argument(
        "--base",
        default=None,
        help=f"base model whose tokenizer and context the token checks use (default {DEFAULT_BASE} when "
        "imported; 'none' skips the token checks)",
    )


def resolve_tokenizer(name: str | None):
    """``(tokenizer, context_length)`` of base ``name``; the default base when None and imported, else no tokenizer."""
    if name == "none":
        return None, None
    if name is None:
        if DEFAULT_BASE not in {b.name for b in list_bases()}:
            print(
                f"note: base {DEFAULT_BASE!r} is not imported, token checks skipped "
                "(run `ftops base import smollm2` or pass --base NAME)",
                file=sys.stderr,
            )
            return None, None
        name = DEFAULT_BASE
    base = load_base(name)
    from transformers import AutoTokenizer  # heavy (seconds): only the token checks pay for it, not `ftops --help`

    try:
        tokenizer = AutoTokenizer.from_pretrained(base.path)
    except Exception as e:
        raise FtopsError(f"base {name!r}: its tokenizer at {base.path} does not load ({e}); re-import the base") from e
    return tokenizer, base.context_length


def _validate(args: argparse.Namespace) -> int:
    tokenizer, context = resolve_tokenizer(args.base)
    report = validate_file(args.path, format=args.format, tokenizer=tokenizer, context_length=context)
    if args.report_dir:
        try:
            save_gx_report(report, args.report_dir)
        except OSError as e:
            raise FtopsError(f"{args.report_dir}: cannot write the GX report there ({e.strerror})") from e
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0 if report.valid else 1
    for issue in report.errors:
        print(f"{args.path}:{issue.line or '-'}: error {issue.code}: {issue.message}")
    shown: Counter[str] = Counter()
    for issue in report.warnings:
        shown[issue.code] += 1
        if shown[issue.code] <= SHOWN_PER_CODE:
            print(f"{args.path}:{issue.line or '-'}: warning {issue.code}: {issue.message}")
    for code, n in shown.items():
        if n > SHOWN_PER_CODE:
            print(f"{args.path}: ... and {n - SHOWN_PER_CODE} more {code} warnings (--json lists all)")
    verdict = "valid" if report.valid else "INVALID"
    tokens = report.stats.get("tokens")
    lengths = f", tokens per example p50 {tokens['p50']} max {tokens['max']}" if tokens else ""
    print(
        f"{args.path}: {verdict} ({report.format}): {len(report.examples)} usable examples, "
        f"{len(report.errors)} errors, {len(report.warnings)} warnings{lengths}"
    )
    return 0 if report.valid else 1


def _split(args: argparse.Namespace) -> int:
    tokenizer, context = resolve_tokenizer(args.base)
    try:
        paths = split_file(args.path, args.out, format=args.format, tokenizer=tokenizer, context_length=context)
    except DataError as e:
        raise FtopsError(str(e)) from e
    except OSError as e:
        raise FtopsError(f"{args.out}: cannot write the splits there ({e.strerror}); give a writable folder") from e
    counts = {name: sum(1 for _ in open(p, encoding="utf-8")) for name, p in paths.items()}
    if args.json:
        print(json.dumps({name: {"path": str(p), "examples": counts[name]} for name, p in paths.items()}, indent=2))
    else:
        for name, p in paths.items():
            print(f"{name}: {counts[name]} examples -> {p}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise FtopsError(f"-n must be at least 1, not {args.n}")
    try:
        path = write_tickets(Path(args.path), n=args.n, seed=args.seed)
    except OSError as e:
        raise FtopsError(
            f"{args.path}: cannot write there ({e.strerror}); give a file path in a writable folder"
        ) from e
    print(f"wrote {args.n} support-ticket examples to {path}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise UsageError(f"-n must be at least 1, not {args.n}")
    if not 1 <= args.max_new_tokens <= 4096:
        raise UsageError(f"--max-new-tokens must be between 1 and 4096, not {args.max_new_tokens}")
    result = write_replay(load_base(args.base), args.path, n=args.n, seed=args.seed, max_new_tokens=args.max_new_tokens)
    print(
        f"wrote {result.written} replay examples answered by {args.base} to {result.path} "
        f"({result.dropped} dropped: no end of turn within {args.max_new_tokens} tokens)"
    )
    return 0
