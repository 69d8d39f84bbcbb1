"""Validating 100,000 examples: the whole ``ftops data validate`` command in a fresh process (imports, SmolLM2
tokenizer, Python pass, token counts, Great Expectations suite), then in one warm process the validation with the
token checks against the validation without them, with the ratio. The acceptance bar is the command under 60 s on
the project's 2-core machine.

    .venv/bin/python bench/bench_validate.py [--n 100000] [--base smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - start, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="examples to validate (default 100000)")
    parser.add_argument("--base", default="smollm2-135m-instruct", help="base whose tokenizer the token checks use")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from ftops.expectations.demo_data import write_tickets

    ftops = [sys.executable, "-m", "ftops.cli", "data", "validate"]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_tickets(Path(tmp) / "tickets.jsonl", n=args.n, seed=0)
        size = path.stat().st_size / 2**20
        # 1. the whole command, cold: interpreter, imports (transformers + torch, GX), tokenizer, validation
        cli_s, cli = timed([*ftops, str(path), "--json", "--base", args.base])
        if cli.returncode not in (0, 1):
            sys.exit(f"ftops data validate failed ({cli.returncode}): {cli.stderr[-2000:]}")
        # 2. in one warm process, the validation alone, with and without the token checks
        from transformers import AutoTokenizer

        from ftops.expectations.validate import validate_file

        os.environ["FTOPS_MODELS"] = os.environ.get("FTOPS_MODELS", str(REPO / ".ftops" / "models"))
        from ftops.base import load_base

        base = load_base(args.base)
        tokenizer = AutoTokenizer.from_pretrained(base.path)
        validate_file(REPO / "tests" / "data" / "clean" / "chat.jsonl")  # GX import and context, once
        start = time.perf_counter()
        bare = validate_file(path)
        bare_s = time.perf_counter() - start
        start = time.perf_counter()
        full = validate_file(path, tokenizer=tokenizer, context_length=base.context_length)
        full_s = time.perf_counter() - start
    report = json.loads(cli.stdout)
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    print(
        f"machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}; "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"file: {args.n} examples, {size:.1f} MB; valid={report['valid']} errors={len(report['errors'])} "
        f"warnings={len(report['warnings'])}; tokens {full.stats['tokens']} "
        f"({full.stats['tokens_counted_exactly']} counted exactly)"
    )
    print(f"ftops data validate --base {args.base} (cold process, end to end): {cli_s:6.1f} s")
    print(f"validate_file, tokens + GX (warm):    {full_s:6.1f} s  ({args.n / full_s:,.0f} examples/s)")
    print(f"validate_file, no tokenizer (warm):   {bare_s:6.1f} s  ({args.n / bare_s:,.0f} examples/s)")
    print(
        f"ratio with/without token checks: {full_s / bare_s:.2f}x; command under 60 s: {'yes' if cli_s < 60 else 'NO'}"
    )
    assert bare.valid == full.valid


if __name__ == "__main__":
    main()
