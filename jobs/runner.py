"""The fine-tuning API's local executor: a worker thread that runs one job at a time, each step a child process.

A job moves ``validating_files`` -> ``queued`` -> ``running`` -> ``succeeded`` | ``failed`` | ``cancelled``:

1. validate: the uploaded file goes through the data contract (``ftops.expectations.validate``); an invalid file
   ends the job ``failed`` with ``error.param="training_file"`` and the first bad lines with their codes. With no
   ``validation_file`` the file is split deterministically 80/10/10 (``ftops.expectations.split``): the held-out
   10% is what the gate judges, and an event says how many examples it holds.
2. train: ``ftops train`` as a child process with the job's config (the service's ``jobs.train_config`` with the
   request's hyperparameters laid over it, the run tagged ``ftops.job_id``). The worker follows the run in MLflow:
   step metrics become ``metrics`` events, checkpoints become the job's checkpoints.
3. gate: ``ftops gate RUN_ID --policy jobs.policy --json`` as a child process. Pass: the version is registered at
   ``staging`` and the job's ``fine_tuned_model`` is ``NAME:VERSION``; refusal: ``failed`` with ``gate_failed``.

The gate runs as a command, not an import: the training stage does not import the registry. Cancel kills the
child's process group at once (the machine is free within seconds). A service restarted with a job ``running``
re-queues it; the next attempt resumes from the run's last checkpoint (``resume=RUN_ID``).

Cost: each step's wall time is added to the run's ``job_train_wall_s`` / ``job_gate_wall_s`` metrics (every attempt,
stopped ones too) and the run is tagged ``ftops.job.hardware`` with ``jobs.hardware``; with the trained tokens
(``num_input_tokens_seen``) that is what ``ftops cost report`` prices per job (serving reads the run; training
never reads serving's price tables).

The same steps run in a Kubernetes pod (``ftops jobs run-one JOB_ID``, :meth:`LocalExecutor.run_in_pod`) when
``jobs.executor`` is ``kubernetes`` (jobs/k8s_executor.py).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
import yaml

from ftops import settings
from ftops.base import load_base
from ftops.env import FTOPS_HOME
from ftops.errors import FtopsError
from ftops.expectations.split import split_file
from ftops.expectations.validate import validate_file
from ftops.jobs.store import JobStore
from ftops.training.job import checkpoints_dir, last_complete_checkpoint

log = logging.getLogger("ftops.jobs")

#: the data contract's minimum examples per split (``ftops.expectations.validate``: too_few_examples)
MIN_SPLIT = 10
#: what the serving host's environment holds for its own processes and a job's children must not inherit: BentoML's
#: worker plumbing (its home, runner map, and the Prometheus multiprocess folder, where a child's metrics would be
#: counted as the service's)
_HOST_ONLY_ENV = ("BENTOML_", "PROMETHEUS_MULTIPROC_DIR")
#: what vLLM sets in the environment of a process that starts an engine, for its own workers (vllm/platforms/cpu.py,
#: vllm/env_override.py): PyTorch's libgomp (and tcmalloc) preloaded, its world size, thread counts. The service's
#: worker has them once its engine starts (in the full test suite a copy taken before the executor was built had
#: them already), and a training job must not inherit them.
_ENGINE_ENV = frozenset(
    {
        "LD_PRELOAD",
        "LOCAL_WORLD_SIZE",
        "NUMEXPR_MAX_THREADS",
        "TORCHINDUCTOR_COMPILE_THREADS",
        "TORCHINDUCTOR_CPP_DYNAMIC_THREADS",
        "VLLM_WORKER_MULTIPROC_METHOD",
        "VLLM_DISABLE_SHARED_EXPERTS_STREAM",
        "PYTORCH_NVML_BASED_CUDA_CHECK",
        "TRITON_CACHE_AUTOTUNING",
        "TILELANG_CLEANUP_TEMP_FILES",
    }
)
#: what a training step logs in MLflow -> the name OpenAI's metrics events and checkpoints use
_METRICS = {"loss": "train_loss", "mean_token_accuracy": "train_mean_token_accuracy"}
_VALID_METRICS = {"eval_loss": "valid_loss", "eval_mean_token_accuracy": "valid_mean_token_accuracy"}


@dataclass
class RunnerSettings:
    """What the executor needs from the service config (``jobs:`` in serving/config.py's terms)."""

    train_config: Path
    """Training YAML whose settings every job starts from (base, data and hyperparameters are the request's)."""
    policy: Path
    """Gate policy YAML a finished job is judged by."""
    learning_rate: float
    """Learning rate ``learning_rate_multiplier: 1`` means (the template's own)."""
    gate_options: list[str] = field(default_factory=list)
    """More ``ftops gate`` options (evaluation settings) for every job."""
    poll_s: float = 1.0
    """How often the worker looks at the queue, the child and MLflow."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment of the child processes."""
    hardware: str | None = None
    """Hardware profile (an instance of costs/hardware.yaml) the jobs run on, tagged ``ftops.job.hardware`` on each
    run; ``ftops cost report`` prices the job's wall time at its hourly price."""


def job_overrides(job: dict, splits: dict[str, Path], learning_rate: float, name: str) -> list[str]:
    """The ``key=value`` overrides of the training config that a job's request means."""
    request = job["request"]
    hp = request.get("hyperparameters") or {}
    out = [
        f"base={request['model']}",
        *(f"data.{k}={v}" for k, v in splits.items()),
        "data.replay=null",
        "progress=false",
        f"run_name={name}-{job['id']}",
        f"tags={json.dumps({'ftops.job_id': job['id'], 'ftops.model_name': name})}",
    ]
    if hp.get("n_epochs", "auto") != "auto":
        out += [f"epochs={hp['n_epochs']}", "max_steps=null"]
    if hp.get("batch_size", "auto") != "auto":
        out.append(f"batch_size={hp['batch_size']}")
    if hp.get("learning_rate_multiplier", "auto") != "auto":
        out.append(f"learning_rate={learning_rate * float(hp['learning_rate_multiplier'])}")
    if request.get("seed") is not None:
        out.append(f"seed={request['seed']}")
    if job.get("run_id"):
        out.append(f"resume={job['run_id']}")
    return out


def registered_name(job: dict) -> str:
    """The registered model a job's adapter goes to: ``<base>-<suffix>``, or ``<base>-ft`` without a suffix."""
    request = job["request"]
    return f"{request['model']}-{request.get('suffix') or 'ft'}"


class LocalExecutor:
    """Runs queued jobs one at a time in a background thread of the service's host."""

    def __init__(self, store: JobStore, config: RunnerSettings) -> None:
        self.store = store
        self.config = config
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen | None = None
        self._training = threading.Event()  # a job trains and is gated on this host (busy())
        self._seen: dict[str, set[int]] = {}  # job id -> steps already reported as metrics events

    # ----------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Re-queue what a dead worker left running (resumed from its checkpoint), then start the thread."""
        for job in self.store.jobs_with_status("running"):
            self.store.update_job(job["id"], only_if=("running",), status="queued", worker=None)
            self.store.add_event(job["id"], "the worker running this job stopped; re-queued to resume", "warn")
        for job in self.store.jobs_with_status("validating_files"):
            self.store.add_event(job["id"], "validation was interrupted; validating again")
        self._thread = threading.Thread(target=self._loop, name="ftops-jobs", daemon=True)
        self._thread.start()

    def busy(self) -> bool:
        """True while a job trains and is gated on this host (``ftops train``, then ``ftops gate``): the service that
        mounts the API pauses its idle engine meanwhile (``engine.pause_while_training``)."""
        return self._training.is_set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._kill_child()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._next()
            except Exception:  # the store is unreachable: wait and look again
                log.exception("fine-tuning worker: cannot read the queue")
                job = None
            if job is None:
                self._stop.wait(self.config.poll_s)
                continue
            try:
                self.run(job)
            except Exception as e:  # one broken job must not stop the queue, nor stay "running" for ever
                log.exception("fine-tuning job %s: unexpected error", job["id"])
                self._fail(job, "internal_error", f"{type(e).__name__}: {e}")

    def _next(self) -> dict | None:
        pending = self.store.jobs_with_status("validating_files")
        return pending[0] if pending else self.store.next_queued()

    # ----------------------------------------------------------------------------------------- one job
    def run(self, job: dict) -> None:
        if job["status"] == "validating_files":
            self.validate(job)
            return
        if not self.store.update_job(
            job["id"],
            only_if=("queued",),
            status="running",
            started_at=job["started_at"] or int(time.time()),
            worker=self.worker_id,
        ):
            return  # cancelled meanwhile
        self.store.add_event(job["id"], "Fine-tuning job started")
        splits = json.loads((self._work_dir(job) / "splits.json").read_text())
        self._training.set()
        try:
            self.train_and_gate(job, splits)
        finally:
            self._training.clear()

    def run_in_pod(self, job_id: str, digests: dict[str, str]) -> None:
        """One job inside the pod of its Kubernetes Job (``ftops jobs run-one``): the executor validated the files
        and set the job ``running`` when it created the Job; this fetches the uploaded bytes from the shared files
        location, checks them against the sha256 the Job carries (``digests``: param -> sha256) and the store's,
        splits them as validation did (deterministic), then trains and gates as the local executor does. A pod
        started again (node lost, evicted) resumes the job's run from its last complete checkpoint."""
        job = self.store.get_job(job_id, None)
        if job is None:
            raise FtopsError(f"no fine-tuning job {job_id} in the job store ({_safe_url(self.store.url)})")
        if job["status"] in ("succeeded", "failed", "cancelled"):
            log.warning("fine-tuning job %s has already %s; nothing to do", job_id, job["status"])
            return
        if job["status"] != "running":
            raise FtopsError(f"fine-tuning job {job_id} is {job['status']}; its executor starts the pod once it runs")
        for param, expected in digests.items():
            row = self.store.get_file(job["request"].get(param) or "", None)
            if row is None or row["sha256"] != expected:
                got = "deleted" if row is None else f"sha256 {row['sha256']}"
                return self._fail(
                    job, "invalid_file", f"{param}: the Job was made for sha256 {expected}, the store has {got}", param
                )
        self.store.update_job(job_id, worker=self.worker_id, started_at=job["started_at"] or int(time.time()))
        self.store.add_event(job_id, f"Pod {self.worker_id} started the job")
        try:
            splits = self._materialize(job, self._work_dir(job))
        except (OSError, FtopsError) as e:  # e.g. the files volume is not mounted where FTOPS_FILES_DIR says
            where = getattr(e, "filename", None)
            why = f"cannot read {where} ({e.strerror})" if where else str(e)
            return self._fail(job, "invalid_file", f"the job's files: {why}", "training_file")
        self.train_and_gate(self.store.get_job(job_id, None), {k: str(v) for k, v in splits.items()})

    def train_and_gate(self, job: dict, splits: dict[str, str]) -> None:
        """``ftops train`` with the job's overrides, then ``ftops gate``; the outcome recorded on the job."""
        name = registered_name(job)
        work = self._work_dir(job)
        config = work / "train.yaml"
        template = yaml.safe_load(Path(self.config.train_config).read_text()) or {}
        config.write_text(yaml.safe_dump(template))
        current = self._resumable(self.store.get_job(job["id"], None))
        overrides = job_overrides(current, splits, self.config.learning_rate, name)
        started = time.monotonic()
        code, out, err = self._child_run(
            job, [sys.executable, "-m", "ftops.cli", "train", str(config), *overrides, "--json"]
        )
        train_wall = time.monotonic() - started
        if self._stop.is_set() or self._cancelled(job) or code != 0:
            self._record_wall(job, "job_train_wall_s", train_wall)  # a stopped attempt's time was paid for too
            if code != 0 and not self._stop.is_set() and not self._cancelled(job):
                self._fail(job, "training_failed", f"training failed: {_last_line(err)}")
            return  # stopping: the job stays running, and the next start re-queues and resumes it
        run_id = json.loads(out.strip().splitlines()[-1])["run_id"]
        self._follow(job, run_id)
        self._record_wall(job, "job_train_wall_s", train_wall, run_id)
        self.store.add_event(job["id"], "Training finished; evaluating the adapter and its base with the gate")
        gate = [
            sys.executable,
            "-m",
            "ftops.cli",
            "gate",
            run_id,
            "--policy",
            str(self.config.policy),
            "--name",
            name,
            "--json",
            *self.config.gate_options,
        ]
        started = time.monotonic()
        code, out, err = self._child_run(job, gate)
        self._record_wall(job, "job_gate_wall_s", time.monotonic() - started, run_id)
        if self._stop.is_set() or self._cancelled(job):
            return
        try:
            report = json.loads(out[out.index("{") :])
        except ValueError:
            return self._fail(job, "gate_error", f"the gate did not run: {_last_line(err)}")
        failed = [r for r in report.get("rules", []) if not r.get("passed")]
        metrics = {r["metric"]: r["value"] for r in report.get("rules", [])}
        self.store.add_event(job["id"], f"Evaluation: {json.dumps(metrics)}", data={"metrics": metrics})
        if report.get("verdict") != "pass":
            rules = "; ".join(f"{r['rule']} (got {r['value']})" for r in failed) or "see the run's gate report"
            self.store.add_event(job["id"], f"Gate verdict: fail ({rules})", "error")
            return self._fail(job, "gate_failed", f"the promotion gate refused the adapter: {rules}")
        model = f"{report['model_name']}:{report['version']}"
        self.store.add_event(job["id"], f"Gate verdict: pass; registered {model} at @staging")
        self.store.update_job(
            job["id"],
            only_if=("running",),
            status="succeeded",
            fine_tuned_model=model,
            finished_at=int(time.time()),
            estimated_finish=None,
        )
        self.store.add_event(job["id"], "The job has successfully completed")

    def validate(self, job: dict) -> None:
        """The data contract on the uploaded file(s), then the split; ``queued`` or ``failed``."""
        request = job["request"]
        work = self._work_dir(job)
        try:
            base = load_base(request["model"])
            for param in ("training_file", "validation_file"):
                if not request.get(param):
                    continue
                row = self.store.get_file(request[param], None)
                if row is None:
                    return self._fail(job, "invalid_file", f"{param} {request[param]} was deleted", param)
                path = work / f"{param}.jsonl"
                path.write_bytes(self.store.file_bytes(row))
                report = validate_file(path, tokenizer=_tokenizer(base.path), context_length=base.context_length)
                if not report.valid:
                    bad = "; ".join(f"line {e.line or '-'}: {e.code}: {e.message}" for e in report.errors[:5])
                    more = f" (+{len(report.errors) - 5} more)" if len(report.errors) > 5 else ""
                    return self._fail(job, "invalid_training_file", f"{row['filename']}: {bad}{more}", param)
                self.store.add_event(
                    job["id"],
                    f"{param} validated: {len(report.examples)} examples",
                    data={"examples": len(report.examples)},
                )
            splits = self._materialize(job, work)
            if not request.get("validation_file"):
                sizes = {k: sum(1 for line in open(p) if line.strip()) for k, p in splits.items()}
                small = {k: n for k, n in sizes.items() if n < MIN_SPLIT}
                if small:
                    got = ", ".join(f"{k} {n}" for k, n in sizes.items())
                    return self._fail(
                        job,
                        "invalid_n_examples",
                        f"training_file splits 80/10/10 into {got}; each needs at least {MIN_SPLIT} examples. The "
                        "split goes by each example's content hash, so a small file splits unevenly: upload more "
                        "examples (200 or more usually suffice) or give a validation_file",
                        "training_file",
                    )
                held = sizes["test"]
                self.store.add_event(
                    job["id"],
                    f"No validation_file: held out {held} examples of training_file for evaluation",
                    data={"held_out": held},
                )
        except FtopsError as e:
            return self._fail(job, "invalid_training_file", str(e), "training_file")
        (work / "splits.json").write_text(json.dumps({k: str(v) for k, v in splits.items()}))
        if self.store.update_job(job["id"], only_if=("validating_files",), status="queued"):
            self.store.add_event(job["id"], "Files validated; the job is queued")

    def _materialize(self, job: dict, work: Path) -> dict[str, Path]:
        """The job's files written under ``work`` from the store (each checked against its sha256) and its splits:
        the validation file as validation and test, or the training file split 80/10/10 (deterministic, so the
        executor's validation and a pod on another machine get the same splits)."""
        request = job["request"]
        paths = {}
        for param in ("training_file", "validation_file"):
            if request.get(param):
                row = self.store.get_file(request[param], None)
                if row is None:
                    raise FtopsError(f"{param} {request[param]} was deleted")
                paths[param] = work / f"{param}.jsonl"
                paths[param].write_bytes(self.store.file_bytes(row))
        if "validation_file" in paths:
            return {
                "train": paths["training_file"],
                "validation": paths["validation_file"],
                "test": paths["validation_file"],
            }
        return split_file(paths["training_file"], work / "data")

    # ----------------------------------------------------------------------------------------- helpers
    def _record_wall(self, job: dict, key: str, seconds: float, run_id: str | None = None) -> None:
        """Add ``seconds`` to the run's ``key`` metric (the job's wall time on its machine, every attempt counted)
        and tag the run with the hardware profile it ran on: what ``ftops cost report`` prices per job."""
        run_id = run_id or (self.store.get_job(job["id"], None) or {}).get("run_id")
        if not run_id:
            return  # the child stopped before it created a run: nothing to price
        client = settings.mlflow_client()
        done = client.get_run(run_id).data.metrics.get(key, 0.0)
        if seconds:
            client.log_metric(run_id, key, done + seconds)
        if self.config.hardware:
            client.set_tag(run_id, "ftops.job.hardware", self.config.hardware)

    def _resumable(self, job: dict) -> dict:
        """A job that ran before resumes from its run's last complete checkpoint; with none, the old run is
        marked killed and the job starts a new one."""
        import mlflow  # heavy: MLflow only where a run is read

        run_id = job.get("run_id")
        if not run_id:
            return job
        last = last_complete_checkpoint(checkpoints_dir(run_id))
        if last is not None:
            self.store.add_event(job["id"], f"Resuming run {run_id} from {last.name}")
            return job
        settings.configure_mlflow()
        mlflow.MlflowClient().set_terminated(run_id, "KILLED")
        self.store.update_job(job["id"], run_id=None)
        self.store.add_event(job["id"], f"Run {run_id} left no complete checkpoint; starting a new run", "warn")
        return {**job, "run_id": None}

    def _work_dir(self, job: dict) -> Path:
        work = settings.home() / "jobs" / job["id"]
        work.mkdir(parents=True, exist_ok=True)
        return work

    def _child_run(self, job: dict, cmd: list[str]) -> tuple[int, str, str]:
        """Run ``cmd`` in its own process group; while it runs, follow the job's MLflow run and honour cancel."""
        env = {**child_environment(), **self.config.env, FTOPS_HOME.name: str(settings.home())}
        out_path = self._work_dir(job) / f"{cmd[3]}.log"  # train.log / gate.log, and .err beside each
        with open(out_path, "w") as out, open(out_path.with_suffix(".err"), "w") as err:
            self._child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)
            while self._child.poll() is None:
                if self._stop.wait(self.config.poll_s):
                    self._kill_child()
                    break
                current = self.store.get_job(job["id"], None)
                if current is None or current["cancel_requested"]:
                    self._kill_child()
                    break
                self._follow(job, current.get("run_id"))
            code = self._child.wait()
        self._child = None
        return code, out_path.read_text(), out_path.with_suffix(".err").read_text()[-4000:]

    def _kill_child(self) -> None:
        child = self._child
        if child is not None and child.poll() is None:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _follow(self, job: dict, run_id: str | None) -> None:
        """Metrics events, checkpoints and estimates from the job's MLflow run (found by its ``ftops.job_id`` tag)."""
        import mlflow  # heavy: MLflow only where a run is read

        settings.configure_mlflow()
        client = mlflow.MlflowClient()
        if run_id is None:
            runs = client.search_runs(
                [settings.experiment_id()],
                f"tags.`ftops.job_id` = '{job['id']}'",
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
            if not runs:
                return
            run_id = runs[0].info.run_id
            self.store.update_job(job["id"], run_id=run_id)
        run = client.get_run(run_id)
        seen = self._seen.setdefault(job["id"], set())
        history = {key: client.get_metric_history(run_id, key) for key in (*_METRICS, *_VALID_METRICS)}
        by_step: dict[int, dict] = {}
        for key, points in history.items():
            for p in points:
                by_step.setdefault(p.step, {})[(_METRICS | _VALID_METRICS)[key]] = p.value
        for step in sorted(by_step):
            if step in seen or "train_loss" not in by_step[step]:
                continue
            seen.add(step)
            data = {"step": step, **by_step[step]}
            self.store.add_event(
                job["id"], f"Step {step}: training loss={data['train_loss']:.4f}", type="metrics", data=data
            )
        tokens = run.data.metrics.get("num_input_tokens_seen")
        max_steps = run.data.params.get("max_steps")
        if tokens:
            self.store.update_job(job["id"], trained_tokens=int(tokens))
        folder = settings.home() / "checkpoints" / run_id
        for ckpt in sorted(folder.glob("checkpoint-*")) if folder.is_dir() else []:
            step = ckpt.name.split("-", 1)[1]
            if step.isdigit() and (ckpt / "trainer_state.json").is_file():
                metrics = {"step": float(step), **by_step.get(int(step), {})}
                self.store.add_checkpoint(job["id"], int(step), f"{registered_name(job)}:ckpt-step-{step}", metrics)
        started = job.get("started_at")
        if started and by_step and max_steps and max_steps.isdigit():
            done = max(by_step)
            if done:
                rate = (time.time() - started) / done
                self.store.update_job(job["id"], estimated_finish=int(started + rate * int(max_steps)))

    def _cancelled(self, job: dict) -> bool:
        current = self.store.get_job(job["id"], None)
        if current is not None and current["cancel_requested"]:
            if self.store.update_job(
                job["id"],
                only_if=("running", "queued"),
                status="cancelled",
                finished_at=int(time.time()),
                estimated_finish=None,
            ):
                self.store.add_event(job["id"], "The job was cancelled; its training process was stopped")
            return True
        return current is None or current["status"] in ("cancelled",)

    def _fail(self, job: dict, code: str, message: str, param: str | None = None) -> None:
        self.store.update_job(
            job["id"],
            only_if=("validating_files", "queued", "running"),
            status="failed",
            error={"code": code, "message": message, "param": param},
            finished_at=int(time.time()),
            estimated_finish=None,
        )
        self.store.add_event(job["id"], f"The job failed: {message}", "error")


def child_environment() -> dict[str, str]:
    """The environment a job's child processes start from: this process's, without what the serving host sets for
    its own processes (:data:`_HOST_ONLY_ENV`: BentoML's plumbing; :data:`_ENGINE_ENV`: what vLLM sets in a process
    that starts an engine). A job's ``ftops train`` runs as it runs from a shell."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_HOST_ONLY_ENV) and k not in _ENGINE_ENV}


def _safe_url(url: str) -> str:
    """A database URL without its password, for errors."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "no output"


_TOKENIZERS: dict[str, object] = {}


def _tokenizer(path: str):
    from transformers import AutoTokenizer  # heavy: transformers only when a file is validated

    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = AutoTokenizer.from_pretrained(path)
    return _TOKENIZERS[path]
