"""``ftops train CONFIG.yaml [key=value ...]``, ``ftops export RUN_ID --merged OUT`` and ``ftops jobs run-one JOB_ID``
(a fine-tuning API job inside its Kubernetes pod)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="QLoRA/LoRA job logging adapter, curves, datasets and lineage to MLflow",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Validate the data, train with TRL's SFTTrainer and log one MLflow run: the resolved config as params, per-step
loss / learning rate / tokens/s, validation loss and token accuracy, system metrics, the three splits as inputs with
digests and their validation report, the adapter (safetensors + manifest) and a loss-curve PNG. Prints the run id.

Every config key can be overridden with key=value (dotted keys for nesting); keys are documented in
training/config.py. A killed job continues from its last checkpoint with resume=RUN_ID.

examples:
  ftops train configs/demo.yaml
  ftops train configs/demo.yaml max_steps=20 lora.r=8 packing=true
  ftops train configs/demo.yaml resume=0123456789abcdef0123456789abcdef""",
    )
    p.add_argument("config", help="job YAML (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a config key, e.g. lora.r=8")
    p.add_argument("--json", action="store_true", help='print {"run_id": ...} as JSON')
    p.set_defaults(func=_train)

    e = sub.add_parser(
        "export",
        help="write a run's base + adapter merged, for runtimes without LoRA",
        description="Merge the run's adapter into its base model (merge_and_unload) and save a plain safetensors "
        "model folder with a sha256 manifest.",
    )
    e.add_argument("run_id", metavar="RUN_ID")
    e.add_argument("--merged", required=True, metavar="OUT", help="output folder (new or empty)")
    e.set_defaults(func=_export)

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
        description="""\
Train and gate one fine-tuning job of the shared job store (FTOPS_JOBS_URL), as the local executor does, recording
events, checkpoints and the outcome there. The job's files are read from FTOPS_FILES_DIR and checked against the
sha256 given in FTOPS_TRAINING_FILE_SHA256 / FTOPS_VALIDATION_FILE_SHA256. Started again, it resumes the job's run
from its last complete checkpoint under FTOPS_HOME. Exit 0 once the outcome is recorded (succeeded or failed),
143 when stopped by SIGTERM (the Job starts another pod, which resumes).

example (what k8s/base/jobs-api/train-job-template.yaml runs):
  ftops jobs run-one ftjob-0123456789abcdef01234567 --config /etc/ftops-jobs/jobs.yaml""",
    )
    one.add_argument("job_id", metavar="JOB_ID")
    one.add_argument("--config", metavar="YAML", help="the jobs settings (the serving config's jobs: mapping)")
    one.set_defaults(func=_run_one)
    srv = jsub.add_parser(
        "serve",
        help="serve the fine-tuning API alone (no inference, no GPU), e.g. as its own Kubernetes Deployment",
        description="/v1/files and /v1/fine_tuning/jobs with their executor, behind the API keys of `ftops serve` "
        "(FTOPS_API_KEY is key id default, FTOPS_ADMIN_KEY admin, --keys-file adds more); /livez and /readyz open.",
    )
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=3001)
    srv.add_argument("--config", metavar="YAML", help="the jobs settings (the serving config's jobs: mapping)")
    srv.add_argument("--keys-file", metavar="YAML", help="API keys: a YAML mapping of key id -> key")
    srv.set_defaults(func=_serve)


def _train(args: argparse.Namespace) -> int:
    import json

    from ftops.training.config import load_config
    from ftops.training.job import train

    config = load_config(args.config, args.overrides)
    run_id = train(config)
    print(json.dumps({"run_id": run_id}) if args.json else run_id)
    return 0


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ftops.training.export import export_merged

    out = export_merged(args.run_id, Path(args.merged))
    print(f"merged model written to {out}")
    return 0


def _run_one(args: argparse.Namespace) -> int:
    import os
    import signal
    from pathlib import Path

    from ftops.jobs.k8s_executor import FILE_ENV
    from ftops.jobs.runner import LocalExecutor
    from ftops.jobs.service import load_jobs_config, load_jobs_config_file, runner_settings
    from ftops.jobs.store import JobStore

    config = load_jobs_config_file(Path(args.config)) if args.config else load_jobs_config({})
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
    from pathlib import Path

    from ftops.jobs.service import load_jobs_config, load_jobs_config_file, serve_alone

    config = load_jobs_config_file(Path(args.config)) if args.config else load_jobs_config({})
    serve_alone(config, args.host, args.port, Path(args.keys_file) if args.keys_file else None)
    return 0
