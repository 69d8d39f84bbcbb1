"""Training submitted through the fine-tuning API against the same training through ``ftops train``, in one run.

    .venv/bin/python bench/bench_jobs_api.py                    # SmolLM2-135M, 200 demo tickets, 8 steps a run
    .venv/bin/python bench/bench_jobs_api.py --steps 4 --order cli,api

The API side is what a user of README "Moving off OpenAI fine-tuning" runs: ``ftops serve`` (its vLLM engine loaded
and idle beside the job, as in production), the ``openai`` client uploading the file and creating the job, the
service's worker running ``ftops train`` as a child process. The CLI side runs ``ftops train`` by hand on the same
template (training/templates/api_job.yaml with ``max_steps``), the same base, the same 80/10/10 splits of the same
file (the split is deterministic) and the same overrides the job runner lays over it, with no service running.
Tokens/s is the run's own ``train_tokens_per_second`` metric on both sides (non-padding input tokens over the time
spent in training steps: training/callbacks.py), read back from MLflow. The job's gate is cut to the minimum (a
lenient policy, 2 examples): it runs after training and is not timed.

The runs go in ``--order`` (default api,cli,cli,api: the second run of a pair was 8-12% slower whichever side it was,
so each side runs first once). Prints every run, the mean of each side and the ratio of the means api/cli (>= 0.95
is the fine-tuning API issue's bar); paste it into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-bench-0123456789abcdef"
POLICY = "name: bench\nrules:\n  - {metric: accuracy, min: 0.0}\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FTOPS_"))}
    return env | {
        "FTOPS_HOME": str(home),
        "FTOPS_MODELS": str(REPO / ".ftops" / "models"),
        "FTOPS_API_KEY": KEY,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }


def _tokens_per_second(home: Path, run_id: str) -> float:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    return client.get_run(run_id).data.metrics["train_tokens_per_second"]


def run_api(home: Path, data: Path, template: Path, base: str) -> tuple[str, float]:
    """Submit through ``ftops serve``'s fine-tuning API; (run id, wall seconds from create to succeeded/failed)."""
    from openai import OpenAI

    policy = home / "policy.yaml"
    policy.write_text(POLICY)
    config = home / "serve.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base": base,
                "jobs": {
                    "train_config": str(template),
                    "policy": str(policy),
                    "gate_options": ["--engine", "transformers", "--max-examples", "2", "--max-new-tokens", "8"]
                    + ["--no-regression"],
                },
            }
        )
    )
    port = _free_port()
    log = open(home / "serve.log", "wb")  # noqa: SIM115 (open while the service runs)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftops.cli", "serve", "--config", str(config), "--port", str(port)],
        env=_env(home),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            raise SystemExit(f"ftops serve not ready: {(home / 'serve.log').read_text()[-3000:]}")
        client = OpenAI(base_url=url + "/v1", api_key=KEY)
        started = time.monotonic()
        file = client.files.create(file=open(data, "rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(training_file=file.id, model=base, suffix="bench")
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            time.sleep(2)
        wall = time.monotonic() - started
        if job.status != "succeeded" and not (job.error and job.error.code == "gate_failed"):
            raise SystemExit(f"the API job ended {job.status}: {job.error}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(120)
        log.close()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], f"tags.`ftops.job_id` = '{job.id}'"
    )
    return runs[0].info.run_id, wall


def run_cli(home: Path, data: Path, template: Path, base: str) -> tuple[str, float]:
    """``ftops train`` on the same template, base and splits, with the job runner's overrides."""
    splits = home / "cli-data"
    subprocess.run(
        [sys.executable, "-m", "ftops.cli", "data", "split", str(data), "--out", str(splits)],
        check=True,
        capture_output=True,
        env=_env(home),
    )
    argv = [sys.executable, "-m", "ftops.cli", "train", str(template), f"base={base}"]
    argv += [f"data.{s}={splits / f'{s}.jsonl'}" for s in ("train", "validation", "test")]
    argv += ["data.replay=null", "progress=false", "run_name=bench-cli"]
    started = time.monotonic()
    out = subprocess.run(argv, check=True, capture_output=True, text=True, env=_env(home), cwd=REPO)
    return out.stdout.strip().splitlines()[-1], time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="training steps on each side (default 8)")
    parser.add_argument("--examples", type=int, default=200, help="demo tickets in the uploaded file (default 200)")
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument(
        "--order",
        default="api,cli,cli,api",
        help="the runs, in order (default api,cli,cli,api: each side first once, as the first run of a pair is faster)",
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ftops-bench-jobs-"))
    try:
        home = root / "home"
        home.mkdir()
        data = root / "tickets.jsonl"
        subprocess.run(
            [sys.executable, "-m", "ftops.cli", "data", "generate", "-n", str(args.examples), str(data)],
            check=True,
            capture_output=True,
        )
        template = root / "api_job.yaml"
        config = yaml.safe_load((REPO / "training" / "templates" / "api_job.yaml").read_text())
        config |= {"max_steps": args.steps, "eval_steps": args.steps, "save_steps": args.steps}
        template.write_text(yaml.safe_dump(config, sort_keys=False))

        runs = []
        for side in args.order.split(","):
            load = os.getloadavg()[0]
            run_id, wall = (run_api if side == "api" else run_cli)(home, data, template, args.base)
            tps = _tokens_per_second(home, run_id)
            runs.append({"side": side, "run_id": run_id, "wall_s": wall, "tokens_per_s": tps, "load_before": load})
            print(f"{side}: {tps:.1f} tokens/s (run {run_id}, {wall:.0f} s wall)", flush=True)
        mean = {side: statistics.mean(r["tokens_per_s"] for r in runs if r["side"] == side) for side in ("api", "cli")}
        ratio = mean["api"] / mean["cli"]
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        print(
            f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {when}, base {args.base}, "
            f"{args.steps} steps per run, order {args.order}, load average after {os.getloadavg()[0]:.1f}"
        )
        print("| # | side | tokens/s | wall s (API: create to end, gate included) | load before |")
        print("|---|---|---|---|---|")
        for i, r in enumerate(runs, 1):
            print(f"| {i} | {r['side']} | {r['tokens_per_s']:.1f} | {r['wall_s']:.0f} | {r['load_before']:.1f} |")
        print(f"\nmean tokens/s: api {mean['api']:.1f}, cli {mean['cli']:.1f}")
        print(f"ratio api/cli: {ratio:.3f} ({'meets' if ratio >= 0.95 else 'below'} the 0.95 bar)")
        print(json.dumps(runs))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
