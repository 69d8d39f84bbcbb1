"""``ftops train`` with glibc's malloc keeping what a step frees (``keep_host_memory: true``, the default) against
glibc's defaults (``keep_host_memory=false``), in one run, alone and beside an idle ``ftops serve``.

    .venv/bin/python bench/bench_host_memory.py                 # SmolLM2-135M, 8 steps, 2 pairs alone, 2 beside
    .venv/bin/python bench/bench_host_memory.py --pairs 1 --steps 4 --no-beside

Why: a training step frees and allocates the same large activations each time. By default glibc hands blocks over
128 KiB-32 MiB back to the OS (``munmap``, heap trim) and the next step faults them in again, each page zeroed by the
kernel. That kernel time grew when another process held memory on the machine: the fine-tuning API's jobs ran 16%
slower than ``ftops train`` by hand (bench/bench_jobs_api.py) because ``ftops serve``'s vLLM engine sat beside them,
and without this setting a paused engine slowed them as much as a live one (with it, what is left is the live
engine's cost: BENCHMARKS.md, 2026-12-05).

Both sides are the same training (training/templates/api_job.yaml with ``max_steps``, the 80/10/10 splits of 200 demo
tickets, the real SmolLM2 base); the runs alternate keep/default in interleaved pairs. Each run's tokens/s is its own
``train_tokens_per_second`` (MLflow); its user and kernel CPU seconds and peak RSS come from ``wait4`` on the child.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from bench_jobs_api import REPO, _env, _tokens_per_second, prepare, start_serve, stop_serve, train_argv


def run_train(home: Path, data: Path, template: Path, base: str, keep: bool) -> dict:
    """One ``ftops train`` with ``keep_host_memory=<keep>``; its run id, tokens/s, CPU seconds and peak RSS."""
    argv = train_argv(home, data, template, base) + [f"keep_host_memory={str(keep).lower()}"]
    out, err = home / "train.out", home / "train.err"
    started = time.monotonic()
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=_env(home), cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"ftops train failed ({proc.returncode}): {err.read_text()[-3000:]}")
    run_id = out.read_text().strip().splitlines()[-1]
    return {
        "keep": keep,
        "run_id": run_id,
        "tokens_per_s": _tokens_per_second(home, run_id),
        "user_s": usage.ru_utime,
        "kernel_s": usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "wall_s": time.monotonic() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="training steps per run (default 8)")
    parser.add_argument("--pairs", type=int, default=2, help="keep/default pairs per condition (default 2)")
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--no-beside", action="store_true", help="skip the runs beside an idle ftops serve")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ftops-bench-memory-"))
    runs: list[dict] = []
    try:
        home, data, template = prepare(root, 200, args.steps)
        began = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
        for condition in ("alone",) if args.no_beside else ("alone", "beside"):
            serve = None
            if condition == "beside":
                serve_home = root / "serve-home"
                serve_home.mkdir()
                (serve_home / "serve.yaml").write_text(yaml.safe_dump({"base": args.base}))
                serve, _ = start_serve(serve_home, serve_home / "serve.yaml")
            try:
                for i in range(args.pairs):
                    for keep in (True, False) if i % 2 == 0 else (False, True):
                        load = os.getloadavg()[0]
                        run = run_train(home, data, template, args.base, keep)
                        runs.append(run | {"condition": condition, "load_before": load})
                        print(
                            f"{condition} keep={keep}: {run['tokens_per_s']:.1f} tokens/s, kernel "
                            f"{run['kernel_s']:.1f} s, peak RSS {run['peak_rss_mib']:.0f} MiB",
                            flush=True,
                        )
            finally:
                if serve is not None:
                    stop_serve(serve)
        ended = datetime.datetime.now(datetime.UTC).strftime("%H:%M UTC")
        print(
            f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {began}-{ended}, base "
            f"{args.base}, {args.steps} steps per run, load average after {os.getloadavg()[0]:.1f}"
        )
        print("| # | condition | keep_host_memory | tokens/s | user s | kernel s | peak RSS MiB | load before |")
        print("|---|---|---|---|---|---|---|---|")
        for i, r in enumerate(runs, 1):
            row = [r["condition"], str(r["keep"]).lower(), f"{r['tokens_per_s']:.1f}", f"{r['user_s']:.1f}"]
            row += [f"{r['kernel_s']:.1f}", f"{r['peak_rss_mib']:.0f}", f"{r['load_before']:.1f}"]
            print(f"| {i} | " + " | ".join(row) + " |")
        print()
        for condition in dict.fromkeys(r["condition"] for r in runs):

            def mean(key: str, keep: bool, condition: str = condition) -> float:
                return statistics.mean(r[key] for r in runs if r["condition"] == condition and r["keep"] is keep)

            keep, default = mean("tokens_per_s", True), mean("tokens_per_s", False)
            print(
                f"{condition}: tokens/s keep {keep:.1f}, default {default:.1f} (ratio keep/default "
                f"{keep / default:.3f}); kernel s "
                f"{mean('kernel_s', True):.1f} vs {mean('kernel_s', False):.1f}; peak RSS MiB "
                f"{mean('peak_rss_mib', True):.0f} vs {mean('peak_rss_mib', False):.0f}"
            )
        print(json.dumps(runs))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
