"""Training submitted through the fine-tuning API against the same training through ``ftops train``, in one run.

    .venv/bin/python bench/bench_jobs_api.py                # SmolLM2-135M, 200 demo tickets, 2 rounds of 8 steps
    .venv/bin/python bench/bench_jobs_api.py --rounds 1 --steps 4
    .venv/bin/python bench/bench_jobs_api.py --order cli,api,api,cli

The API side is what a user of README "Moving off OpenAI fine-tuning" runs: ``ftops serve`` (its vLLM engine loaded,
and paused while the job trains: ``engine.pause_while_training``, the default), the ``openai`` client uploading the
file and creating the job, the service's worker running ``ftops train`` as a child process. The CLI side runs
``ftops train`` by hand on the same template (training/templates/api_job.yaml with ``max_steps``), the same base,
the same 80/10/10 splits of the same file (the split is deterministic) and the same overrides the job runner lays
over it, with no service running. Tokens/s is the run's own ``train_tokens_per_second`` metric on both sides
(non-padding input tokens over the time spent in training steps: training/callbacks.py), read back from MLflow. The
job's gate is cut to the minimum (a lenient policy, 2 examples): it runs after training and is not timed.

Two more sides. ``unpaused`` is the API side with ``engine.pause_while_training: false``: the engine runs idle
beside the job; api/unpaused is what pausing it gives. ``beside`` runs ``ftops train`` by hand as the CLI side does,
while the API side's ``ftops serve`` runs idle on the machine (started before, stopped after; it pauses nothing,
since no job of its own trains); beside/cli is what a running idle engine costs a training process on the same
cores.

The runs go in rounds, each in another order (``--rounds 2``: api,cli,unpaused,beside, then the reverse), so that a
drift of the machine over the run (a noisy neighbour, the page cache) falls on every side; one run of 8 steps varied
by up to 25% on the same side (BENCHMARKS.md), so one run per side cannot settle 5%. ``--order`` gives the runs
explicitly instead.

What the API side adds to the machine is measured too: while the job's ``ftops train`` child runs, the CPU time of
every other process of ``ftops serve``'s tree (the BentoML worker with its vLLM engine and the job worker that polls
the store and MLflow), per second of training, sampled with psutil at each poll of the client.

Prints every run, the mean of each side and the ratios of the means: api/cli (>= 0.95 is the fine-tuning API issue's
bar), api/unpaused, api/beside and beside/cli; paste it into BENCHMARKS.md.
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

import psutil
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


def _service_cpu(service: psutil.Process) -> tuple[bool, float]:
    """(is a ``train`` child running, CPU seconds of the service's tree apart from that child and its own tree)."""
    training, total = False, 0.0
    skip: set[int] = set()
    for p in [service, *service.children(recursive=True)]:
        try:
            if p.pid in skip or {"ftops.cli", "train"} <= set(p.cmdline()):
                training = training or p.pid not in skip
                skip.update(c.pid for c in p.children(recursive=True))
                continue
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # it ended between the listing and the look
            continue
    return training, total


def start_serve(home: Path, config: Path) -> tuple[subprocess.Popen, str]:
    """``ftops serve --config CONFIG`` on a free port, its output in ``home/serve.log``; (process, URL) once ready."""
    port = _free_port()
    with open(home / "serve.log", "wb") as log:  # the child holds its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "ftops.cli", "serve", "--config", str(config), "--port", str(port)],
            env=_env(home),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO,
        )
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(1)
    stop_serve(proc)
    raise SystemExit(f"ftops serve not ready: {(home / 'serve.log').read_text()[-3000:]}")


def stop_serve(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(120)


def serve_config(home: Path, template: Path, base: str, pause: bool = True) -> Path:
    """The API side's ``ftops serve`` config: ``base``, jobs from ``template``, a lenient gate on 2 examples;
    ``pause``: ``engine.pause_while_training``."""
    policy = home / "policy.yaml"
    policy.write_text(POLICY)
    config = home / "serve.yaml"
    gate = ["--engine", "transformers", "--max-examples", "2", "--max-new-tokens", "8", "--no-regression"]
    jobs = {"train_config": str(template), "policy": str(policy), "gate_options": gate}
    config.write_text(yaml.safe_dump({"base": base, "jobs": jobs, "engine": {"pause_while_training": pause}}))
    return config


def run_api(home: Path, data: Path, template: Path, base: str, pause: bool = True) -> tuple[str, float, float | None]:
    """Submit through ``ftops serve``'s fine-tuning API; (run id, wall seconds from create to succeeded/failed,
    cores the rest of the service used while the job trained)."""
    from openai import OpenAI

    proc, url = start_serve(home, serve_config(home, template, base, pause))
    try:
        client = OpenAI(base_url=url + "/v1", api_key=KEY)
        started = time.monotonic()
        file = client.files.create(file=open(data, "rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(training_file=file.id, model=base, suffix="bench")
        tree, window = psutil.Process(proc.pid), []  # (time, service CPU s) while the train child runs
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            training, cpu = _service_cpu(tree)
            if training:
                window.append((time.monotonic(), cpu))
            time.sleep(2)
        wall = time.monotonic() - started
        overhead = None
        if len(window) >= 2:
            overhead = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
        if job.status != "succeeded" and not (job.error and job.error.code == "gate_failed"):
            raise SystemExit(f"the API job ended {job.status}: {job.error}")
    finally:
        stop_serve(proc)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], f"tags.`ftops.job_id` = '{job.id}'"
    )
    return runs[0].info.run_id, wall, overhead


def train_argv(home: Path, data: Path, template: Path, base: str) -> list[str]:
    """``ftops train`` on the template with the job runner's overrides, on the splits of ``data`` (made once)."""
    splits = home / "cli-data"
    if not (splits / "test.jsonl").is_file():
        subprocess.run(
            [sys.executable, "-m", "ftops.cli", "data", "split", str(data), "--out", str(splits)],
            check=True,
            capture_output=True,
            env=_env(home),
        )
    argv = [sys.executable, "-m", "ftops.cli", "train", str(template), f"base={base}"]
    argv += [f"data.{s}={splits / f'{s}.jsonl'}" for s in ("train", "validation", "test")]
    return argv + ["data.replay=null", "progress=false", "run_name=bench-cli"]


def run_cli(home: Path, data: Path, template: Path, base: str) -> tuple[str, float, None]:
    """``ftops train`` on the same template, base and splits, with the job runner's overrides."""
    argv = train_argv(home, data, template, base)
    started = time.monotonic()
    out = subprocess.run(argv, check=True, capture_output=True, text=True, env=_env(home), cwd=REPO)
    return out.stdout.strip().splitlines()[-1], time.monotonic() - started, None


def run_unpaused(home: Path, data: Path, template: Path, base: str) -> tuple[str, float, float | None]:
    """The API side with ``engine.pause_while_training: false``: the engine runs idle beside the job."""
    return run_api(home, data, template, base, pause=False)


def run_beside(home: Path, data: Path, template: Path, base: str) -> tuple[str, float, None]:
    """``ftops train`` by hand, as :func:`run_cli`, while the API side's ``ftops serve`` runs idle on the machine."""
    proc, _ = start_serve(home, serve_config(home, template, base))
    try:
        return run_cli(home, data, template, base)
    finally:
        stop_serve(proc)


def prepare(root: Path, examples: int, steps: int) -> tuple[Path, Path, Path]:
    """Under ``root``: the runs' ``FTOPS_HOME``, ``examples`` demo tickets and the API template cut to ``steps``."""
    home = root / "home"
    home.mkdir()
    data = root / "tickets.jsonl"
    subprocess.run(
        [sys.executable, "-m", "ftops.cli", "data", "generate", "-n", str(examples), str(data)],
        check=True,
        capture_output=True,
    )
    template = root / "api_job.yaml"
    config = yaml.safe_load((REPO / "training" / "templates" / "api_job.yaml").read_text())
    config |= {"max_steps": steps, "eval_steps": steps, "save_steps": steps}
    template.write_text(yaml.safe_dump(config, sort_keys=False))
    return home, data, template


#: what each side runs
SIDES = {"api": run_api, "cli": run_cli, "unpaused": run_unpaused, "beside": run_beside}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="training steps on each side (default 8)")
    parser.add_argument("--examples", type=int, default=200, help="demo tickets in the uploaded file (default 200)")
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds of api, cli, unpaused and beside, each round in another order (default 2)",
    )
    parser.add_argument("--order", help="the runs, in order, instead of --rounds (e.g. api,cli,cli,api)")
    args = parser.parse_args()
    turns = ("api,cli,unpaused,beside", "beside,unpaused,cli,api", "cli,api,beside,unpaused")
    order = args.order or ",".join(turns[i % len(turns)] for i in range(args.rounds))
    sides = order.split(",")
    if set(sides) - set(SIDES) or not {"api", "cli"} <= set(sides):
        parser.error(f"--order {order!r}: a comma-separated list of {', '.join(SIDES)}, api and cli at least once")

    root = Path(tempfile.mkdtemp(prefix="ftops-bench-jobs-"))
    try:
        home, data, template = prepare(root, args.examples, args.steps)

        runs = []
        began = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
        for side in sides:
            load = os.getloadavg()[0]
            run_id, wall, overhead = SIDES[side](home, data, template, args.base)
            tps = _tokens_per_second(home, run_id)
            runs.append(
                {"side": side, "run_id": run_id, "wall_s": wall, "tokens_per_s": tps, "load_before": load}
                | {"service_cores": overhead}
            )
            print(f"{side}: {tps:.1f} tokens/s (run {run_id}, {wall:.0f} s wall)", flush=True)
        mean = {side: statistics.mean(r["tokens_per_s"] for r in runs if r["side"] == side) for side in set(sides)}
        ended = datetime.datetime.now(datetime.UTC).strftime("%H:%M UTC")
        print(
            f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {began}-{ended}, base "
            f"{args.base}, {args.steps} steps per run, order {order}, load average after {os.getloadavg()[0]:.1f}"
        )
        print(
            "| # | side | tokens/s | wall s (API: create to end, gate incl.) | load before | rest of service, cores |"
        )
        print("|---|---|---|---|---|---|")
        for i, r in enumerate(runs, 1):
            cores = "" if r["service_cores"] is None else f"{r['service_cores']:.3f}"
            row = [r["side"], f"{r['tokens_per_s']:.1f}", f"{r['wall_s']:.0f}", f"{r['load_before']:.1f}", cores]
            print(f"| {i} | " + " | ".join(row) + " |")
        print("\nmean tokens/s: " + ", ".join(f"{side} {mean[side]:.1f}" for side in SIDES if side in mean))
        ratio = mean["api"] / mean["cli"]
        print(f"api/cli: {ratio:.3f} ({'meets' if ratio >= 0.95 else 'below'} the 0.95 bar)")
        if "unpaused" in mean:
            print(f"api/unpaused: {mean['api'] / mean['unpaused']:.3f} (what pausing the idle engine gives a job)")
        if "beside" in mean:
            print(f"api/beside: {mean['api'] / mean['beside']:.3f} (what the API path costs on the same host)")
            print(f"beside/cli: {mean['beside'] / mean['cli']:.3f} (what the idle ftops serve beside costs)")
        print(json.dumps(runs))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
