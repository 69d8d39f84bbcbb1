"""``ftops jobs run-one JOB_ID`` (a fine-tuning API job inside its Kubernetes pod) and ``ftops jobs serve`` (the
fine-tuning API alone, without inference)."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

RUN_ONE_DESCRIPTION = """\
Train and gate one fine-tuning job of the shared job store (FTOPS_JOBS_URL), as the local executor does, recording
events, checkpoints and the outcome there. The job's files are read from FTOPS_FILES_DIR and checked against the
sha256 given in FTOPS_TRAINING_FILE_SHA256 / FTOPS_VALIDATION_FILE_SHA256. Started again, it resumes the job's run
from its last complete checkpoint under FTOPS_HOME. Exit 0 once the outcome is recorded (succeeded or failed),
143 when stopped by SIGTERM (the Job starts another pod, which resumes).

example (what k8s/base/jobs-api/train-job-template.yaml runs):
  ftops jobs run-one ftjob-0123456789abcdef01234567 --config /etc/ftops-jobs/jobs.yaml"""

CONFIG_HELP = "the jobs settings (the serving config's jobs: mapping)"


def register(sub: argparse._SubParsersAction) -> None:
    j = sub.add_parser(
        "jobs",
        help="fine-tuning API jobs: run one inside its Kubernetes pod",
        description="The fine-tuning API's jobs (/v1/fine_tuning/jobs); `ftops serve` runs the API itself.",
    )
    jsub = j.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    one = jsub.add_parser(
        "run-one",
        help="train and gate one job (the command of the pod the kubernetes executor creates)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=RUN_ONE_DESCRIPTION,
    )
    one.add_argument("job_id", metavar="JOB_ID")
    one.add_argument("--config", metavar="YAML", help=CONFIG_HELP)
    one.set_defaults(func=_run_one)
    srv = jsub.add_parser(
        "serve",
        help="serve the fine-tuning API alone (no inference, no GPU), e.g. as its own Kubernetes Deployment",
        description="/v1/files and /v1/fine_tuning/jobs with their executor, behind the API keys of `ftops serve` "
        "(FTOPS_API_KEY is key id default, FTOPS_ADMIN_KEY admin, --keys-file adds more); /livez and /readyz open.",
    )
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=3001)
    srv.add_argument("--config", metavar="YAML", help=CONFIG_HELP)
    srv.add_argument("--keys-file", metavar="YAML", help="API keys: a YAML mapping of key id -> key")
    srv.set_defaults(func=_serve)


def _run_one(args: argparse.Namespace) -> int:
    # heavy for `ftops --help`: the jobs API pulls in FastAPI and SQLAlchemy (over a second)
    from ftops.jobs.k8s_executor import FILE_ENV
    from ftops.jobs.runner import LocalExecutor
    from ftops.jobs.service import runner_settings
    from ftops.jobs.store import JobStore

    config = _config(args.config)
    store = JobStore(config.url, config.files_dir)
    executor = LocalExecutor(store, runner_settings(config))
    executor.worker_id = f"k8s/{os.environ.get('POD_NAME') or executor.worker_id}"

    def _terminate(_signum, _frame) -> None:  # PID 1 in a pod: SIGTERM is ignored unless handled
        executor._stop.set()
        executor._kill_child()

    signal.signal(signal.SIGTERM, _terminate)
    digests = {param: os.environ[env] for param, env in FILE_ENV.items() if os.environ.get(env)}
    try:
        executor.run_in_pod(args.job_id, digests)
        status = (store.get_job(args.job_id, None) or {}).get("status")
    finally:
        store.close()
    if executor._stop.is_set() and status == "running":
        print(f"ftops jobs: {args.job_id}: stopped by SIGTERM; the next pod resumes it", flush=True)
        return 143
    print(f"ftops jobs: {args.job_id}: {status}", flush=True)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ftops.jobs.service import serve_alone  # heavy for `ftops --help`, as in _run_one

    serve_alone(_config(args.config), args.host, args.port, Path(args.keys_file) if args.keys_file else None)
    return 0


def _config(path: str | None):
    """The jobs settings from ``--config``, or the defaults."""
    from ftops.jobs.service import load_jobs_config, load_jobs_config_file  # heavy for `ftops --help`, as above

    return load_jobs_config_file(Path(path)) if path else load_jobs_config({})
