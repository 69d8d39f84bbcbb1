"""Shared fixtures.

- ``ftops_home``: a fresh ``FTOPS_HOME`` (MLflow on a temporary SQLite store + local artifacts) per test.
- ``smollm2``: the record of the real SmolLM2-135M-Instruct base that ``make setup`` imported.
- ``tiny_base``: a tiny random Llama with the SmolLM2 tokenizer, imported as base ``tiny-llama`` once per session.
- ``start_service`` / ``running_service``: a real ``ftops serve`` (BentoML + a vLLM engine on the tiny base) with the
  config differences as arguments; ``tiny_chat_service`` and ``base_service``: the two that several modules share,
  and ``gate_engine``: one in-process vLLM engine for the modules that drive it directly (an engine start costs
  30-60 s here, minutes on a loaded machine). Each starts with the first module that needs it and stops after the
  last one (:func:`shared`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)

REPO = Path(__file__).resolve().parents[1]
SMOLLM2_MODELS = REPO / ".ftops" / "models"


@pytest.fixture(scope="session")
def smollm2():
    from ftops.base import SMOLLM2_NAME, load_base

    return load_base(SMOLLM2_NAME, SMOLLM2_MODELS)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """A session-wide models folder: the tiny base is imported into it, and SmolLM2's record is copied in
    (its path still points at the folder ``make setup`` made), so both resolve by name under ``ftops_home``."""
    import shutil

    folder = tmp_path_factory.mktemp("models")
    for record in SMOLLM2_MODELS.glob("*.json"):
        shutil.copy(record, folder / record.name)
    return folder


@pytest.fixture(scope="session")
def tiny_base(smollm2, models_dir, tmp_path_factory):
    from tiny import build_tiny_llama  # tests/tiny.py; imports torch, so only for the tests that need the base

    from ftops.base import import_base

    src = build_tiny_llama(Path(smollm2.path), tmp_path_factory.mktemp("tiny-src") / "tiny-llama")
    base, _ = import_base(src, "tiny-llama", models_dir)
    return base


@pytest.fixture
def ftops_home(tmp_path, monkeypatch, models_dir):
    """An isolated FTOPS_HOME; base models resolve from the session models folder (tiny-llama) and SmolLM2's."""
    home = tmp_path / "ftops-home"
    monkeypatch.setenv("FTOPS_HOME", str(home))
    monkeypatch.setenv("FTOPS_MODELS", str(models_dir))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


# --- registry: training runs with an adapter, built here until training/job.py makes them (registry tests use it) ---


def build_adapter(
    base, out: Path, *, b_init: float = 0.0, r: int = 8, targets=("q_proj", "v_proj"), seed: int = 0
) -> Path:
    """A PEFT LoRA on ``base`` saved with ``ftops.adapter.save_adapter`` into ``out``; deterministic in ``seed``.
    ``b_init=0`` leaves LoRA B at zero (exactly "learning rate 0"); otherwise B ~ N(0, b_init) moves the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftops import adapter as fa

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets)))
    if b_init:
        gen = torch.Generator().manual_seed(seed)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.data = torch.randn(p.shape, generator=gen) * b_init
    fa.save_adapter(peft_model, tokenizer, out, base.name, base.sha256, "none")
    return out


def log_adapter_run(
    base,
    test_rows: list[dict],
    *,
    b_init: float = 0.0,
    r: int = 8,
    targets=("q_proj", "v_proj"),
    seed: int = 0,
    tags: dict | None = None,
    train_rows: list[dict] | None = None,
    replay_rows: list[dict] | None = None,
) -> str:
    """A finished MLflow run shaped like one of ``ftops train``: :func:`build_adapter` as artifact ``adapter/``, the
    held-out split as ``data/test.jsonl``, the training split as ``data/train.jsonl`` (default: one example unlike any
    held-out one), the replay data as ``data/replay.jsonl`` if given, and the lineage tags. Returns the run id."""
    import json
    import tempfile

    import mlflow

    from ftops import adapter as fa
    from ftops import settings

    with tempfile.TemporaryDirectory() as tmp:
        out = build_adapter(base, Path(tmp) / "adapter", b_init=b_init, r=r, targets=targets, seed=seed)
        data = Path(tmp) / "data"
        data.mkdir()
        hello = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]
        default_train = [{"messages": hello}]
        splits = {"test": test_rows, "train": default_train if train_rows is None else train_rows}
        if replay_rows is not None:
            splits["replay"] = replay_rows
        for split, rows in splits.items():
            with open(data / f"{split}.jsonl", "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
        lineage = {
            fa.TAG_BASE_NAME: base.name,
            fa.TAG_BASE_SHA256: base.sha256,
            fa.TAG_QUANTIZATION: "none",
            fa.TAG_LORA_R: str(r),
            fa.TAG_LORA_TARGETS: ",".join(sorted(targets)),
            fa.TAG_DATASET_PREFIX + "test.digest": "0" * 64,
            **(tags or {}),
        }
        with mlflow.start_run(experiment_id=settings.experiment_id(), tags=lineage) as run:
            mlflow.log_artifacts(str(out), fa.ARTIFACT_PATH)
            mlflow.log_artifacts(str(data), "data")
    return run.info.run_id


def tiny_trainer(config, base, data: dict[str, Path], out: Path):
    """The ``SFTTrainer`` a job builds (``training/job.py``) for ``config`` on ``base``, with the training chat
    template and the validated train/validation splits of ``data``, without an MLflow run.
    Returns ``(trainer, tokenizer, splits)``."""
    from transformers import AutoTokenizer

    from ftops.training.chat_template import training_chat_template
    from ftops.training.job import _build_trainer, load_model, validate_split

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    tokenizer.chat_template = training_chat_template(tokenizer, base.name)
    splits = {s: validate_split(s, data[s], tokenizer, 2048) for s in ("train", "validation")}
    trainer, _ = _build_trainer(config, load_model(config, base), tokenizer, splits, out, "test", [])
    return trainer, tokenizer, splits


LEARNED_ADAPTER = {
    "b_init": 0.5,
    "seed": 1,
}  # registry tests: an adapter whose answers differ from its base's


@pytest.fixture(scope="session")
def learned_rows(tiny_base, tmp_path_factory) -> list[dict]:
    """Held-out rows whose reference answers are what the ``LEARNED_ADAPTER`` adapter answers greedily (and the base
    does not): a candidate that really beats its base on them, without a training run. ``log_adapter_run(tiny_base,
    learned_rows, **LEARNED_ADAPTER)`` logs that same adapter (it is deterministic in its seed)."""
    from ftops.registry.engines import TransformersEngine

    adapter = build_adapter(tiny_base, tmp_path_factory.mktemp("learned") / "adapter", **LEARNED_ADAPTER)
    prompts = [
        [{"role": "user", "content": f"Ticket {i}: the {item} arrived broken."}]
        for i, item in enumerate(("kettle", "lamp", "toaster", "scarf"))
    ]
    engine = TransformersEngine(tiny_base.path)
    cand = engine.chat(prompts, adapter, 8)
    base = engine.chat(prompts, None, 8)
    assert all(c.text != b.text for c, b in zip(cand, base)), "the learned adapter must answer unlike its base"
    return [{"messages": [*p, {"role": "assistant", "content": c.text}]} for p, c in zip(prompts, cand)]


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store with its schema migrated once per session (a fresh store's migrations take
    5-10 s here); :func:`fast_ftops_home` copies it into each test's home."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    uri = f"sqlite:///{path}"
    mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()
    mlflow.MlflowClient(tracking_uri=uri).search_experiments()
    return path


@pytest.fixture
def fast_ftops_home(ftops_home, migrated_mlflow_db) -> Path:
    """``ftops_home`` whose MLflow store starts as a copy of the session's migrated empty store."""
    import shutil

    ftops_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(migrated_mlflow_db, ftops_home / "mlflow.db")
    return ftops_home


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 60) -> None:
    """``sig`` to the process, its group and every descendant (BentoML's workers, vLLM's engine and uvicorn's workers
    may run in groups of their own), then SIGKILL to whatever outlived ``wait``."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _, alive = psutil.wait_procs(family, timeout=wait)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def wait_http(url: str, proc: subprocess.Popen, log: Path, what: str, timeout: float = 600) -> None:
    """Wait until ``url`` answers at all (an error status counts: it answers). ``proc`` exiting, or no answer within
    ``timeout`` (a give-up point for a loaded 2-core machine, not a timing check), fails with the tail of ``log``."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not answer {url}:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


def start_mlflow_server(
    backend_uri: str, folder: Path, workers: int = 1, port: int | None = None, proxy_artifacts: bool = True
) -> tuple[str, subprocess.Popen]:
    """A real ``mlflow server`` process on ``backend_uri`` answering ``/health``; returns ``(url, process)``. Its
    artifacts go to ``folder/server-artifacts``, served through the server (``--artifacts-destination``) or, with
    ``proxy_artifacts=False``, written there by the clients (``--default-artifact-root``); its log is
    ``folder/mlflow-server-PORT.log``. ``port`` fixed lets a test restart a server where its clients look. The caller
    stops it with :func:`stop_mlflow_server`, e.g. to see what a registry that stopped answering does."""
    port = port or free_port()
    log_path = folder / f"mlflow-server-{port}.log"
    artifacts = (folder / "server-artifacts").as_uri()
    argv = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", backend_uri]
    argv += ["--artifacts-destination" if proxy_artifacts else "--default-artifact-root", artifacts]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    with open(log_path, "a") as log:  # the child holds its own copy of the descriptor
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, log_path, f"mlflow server on {backend_uri}")
    except BaseException:
        stop_mlflow_server(proc)
        raise
    return url, proc


def stop_mlflow_server(proc: subprocess.Popen) -> None:
    """Stop a server from :func:`start_mlflow_server` and every process it started (uvicorn workers, job consumers)."""
    kill_tree(proc)


# --- serving: one start-up helper for every module that runs a real `ftops serve` ------------------------------------

API_KEY = "test-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"


def make_adapter(base, out: Path, seed: int) -> Path:
    """A PEFT LoRA (r=8 on q_proj, v_proj) on the tiny base with a large random B, so each seed answers its own way."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftops.adapter import save_adapter

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 2.0)
    save_adapter(peft_model, tokenizer, out, base.name, base.sha256, "none")
    return out


def register_version(name: str, folder: Path, base, tags: dict | None = None) -> str:
    """Register ``folder`` as a new version of ``name`` with the tags a gate pass leaves (verdict ``pass``, the
    manifest's digest), updated with ``tags`` (a value of None removes that tag)."""
    import mlflow
    from mlflow import MlflowClient

    from ftops import settings
    from ftops.adapter import ARTIFACT_PATH, TAG_ADAPTER_DIGEST, TAG_BASE_NAME, TAG_BASE_SHA256, TAG_GATE_VERDICT

    settings.configure_mlflow()
    client = MlflowClient()
    gate_tags = {
        TAG_BASE_NAME: base.name,
        TAG_BASE_SHA256: base.sha256,
        TAG_GATE_VERDICT: "pass",
        TAG_ADAPTER_DIGEST: json.loads((folder / "manifest.json").read_text())["digest"],
    }
    with mlflow.start_run(experiment_id=settings.experiment_id()) as run:
        mlflow.log_artifacts(str(folder), ARTIFACT_PATH)
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass
    mv = client.create_model_version(
        name,
        f"runs:/{run.info.run_id}/{ARTIFACT_PATH}",
        run_id=run.info.run_id,
        tags={k: v for k, v in {**gate_tags, **(tags or {})}.items() if v is not None},
    )
    return str(mv.version)


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, dict]:
    """(status, headers, JSON body or ``{"raw": bytes}``) of one request; an error status is returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, headers, raw = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, dict(e.headers), e.read()
    return status, headers, (json.loads(raw) if raw.strip().startswith(b"{") else {"raw": raw})


def wait_ready(proc: subprocess.Popen, url: str, log_path: Path, timeout: float = 1200) -> None:
    """Wait until ``url``/readyz answers 200. A service that exits, or is not ready within ``timeout`` (a guard
    against hangs, not a speed check: the engine start takes ~30 s idle, and took over 10 minutes on this 2-core
    machine at a load average of 13), fails with the tail of its log."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if http("GET", url + "/readyz")[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"service not ready in {timeout:.0f} s:\n{log_path.read_text()[-4000:]}")
        time.sleep(1)


@dataclass
class Service:
    """A service process from :func:`start_service`: its URL, home (``FTOPS_HOME``), config and log."""

    proc: subprocess.Popen
    url: str
    home: Path
    config: Path
    log: Path
    _log_file: IO = field(repr=False)

    def stop(self, timeout: float = 60) -> None:
        """Stop the service and every process it started: SIGTERM to its process group (BentoML's arbiter stops
        its workers), then SIGKILL to whatever outlived it, the workers included (each runs in a process group of
        its own, so the arbiter's group alone misses them, and the engine and job processes below them)."""
        import psutil

        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        _, alive = psutil.wait_procs(family, timeout=30)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=30)
        self._log_file.close()


def start_service(
    home: Path,
    models_dir: Path,
    *,
    written_by: str,
    base: str = "tiny-llama",
    adapters: list[str] | tuple[str, ...] = (),
    engine: dict | None = None,
    limits: dict | None = None,
    admin_key: str | None = ADMIN_KEY,
    env: dict[str, str] | None = None,
    via_bentoml: bool = False,
    **settings,
) -> Service:
    """Start a real service on ``base`` and return at once (not ready yet: see :func:`wait_ready`).

    Writes ``home/serve.yaml`` from the arguments (``settings``: any other top-level key of serving/config.py, e.g.
    ``poll_interval_s``, ``ledger_url``, ``jobs``, ``retry``), then runs ``ftops serve --config`` on a free port in
    its own process group, with ``FTOPS_HOME=home``, ``FTOPS_MODELS=models_dir``, the API key :data:`API_KEY`, the
    admin key ``admin_key`` (None: no admin key), and ``env`` on top. ``via_bentoml``: ``bentoml serve`` itself, which
    skips ``ftops serve``'s pre-flight (for a test of what the service does when that pre-flight would stop it)."""
    import yaml

    from ftops.serving.config import load_config
    from ftops.serving.engine import cpu_env

    home.mkdir(parents=True, exist_ok=True)
    config = home / "serve.yaml"
    document = {"base": base, "adapters": list(adapters), **settings}
    document |= {k: v for k, v in (("engine", engine), ("limits", limits)) if v is not None}
    config.write_text(
        f"# ftops serve --config {config.name} (written by {written_by})\n" + yaml.safe_dump(document, sort_keys=False)
    )
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    child_env.pop("FTOPS_ADMIN_KEY", None)
    child_env |= {
        "FTOPS_HOME": str(home),
        "FTOPS_MODELS": str(models_dir),
        "FTOPS_API_KEY": API_KEY,
        "BENTOML_HOME": str(home / "bentoml"),
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        **({"FTOPS_ADMIN_KEY": admin_key} if admin_key else {}),
    }
    if via_bentoml:  # what `ftops serve` sets before it hands over to bentoml (the caller's values win)
        child_env = {**cpu_env(load_config(config).engine), **child_env, "FTOPS_SERVE_CONFIG": str(config)}
        bentoml = str(Path(sys.executable).with_name("bentoml"))
        argv = [bentoml, "serve", "ftops.serving.service:FtopsLLM", "--host", "127.0.0.1", "--port", str(port)]
    else:
        argv = [sys.executable, "-m", "ftops.cli", "serve", "--config", str(config), "--port", str(port)]
    child_env |= env or {}
    log_path = home / "server.log"
    log = open(log_path, "wb")  # noqa: SIM115 (open while the service runs; Service.stop closes it)
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env=child_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Service(proc, f"http://127.0.0.1:{port}", home, config, log_path, log)


@contextlib.contextmanager
def running_service(home: Path, models_dir: Path, **kwargs) -> Iterator[Service]:
    """:func:`start_service`, ready (``/readyz`` 200) while the block runs, stopped after it."""
    service = start_service(home, models_dir, **kwargs)
    try:
        wait_ready(service.proc, service.url, service.log)
        yield service
    finally:
        service.stop()


@contextlib.contextmanager
def service_env(home: Path, models_dir: Path) -> Iterator[pytest.MonkeyPatch]:
    """This process's environment pointed at a service's home (its MLflow store), restored after the block."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTOPS_HOME", str(home))
        mp.setenv("FTOPS_MODELS", str(models_dir))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        yield mp


# --- services shared between modules: started by the first module that needs one, stopped after the last one -------

_SHARED: dict[str, tuple[contextlib.ExitStack, object]] = {}


def _used_after_this_module(request: pytest.FixtureRequest, name: str) -> bool:
    """Whether a test of a later module (in the order pytest runs them) needs fixture ``name``."""
    items = request.session.items
    last = max(i for i, item in enumerate(items) if getattr(item, "module", None) is request.module)
    return any(name in getattr(item, "fixturenames", ()) for item in items[last + 1 :])


@contextlib.contextmanager
def shared(request: pytest.FixtureRequest, start) -> Iterator:
    """For a module-scoped fixture: the value of the context manager ``start()``, entered by the first module that
    needs the fixture and exited after the last one, so that modules share one service (an engine start costs 30-60
    s here) and none outlives its users (each holds about 3 GB and polls its registry)."""
    name = request.fixturename
    if name not in _SHARED:
        stack = contextlib.ExitStack()
        _SHARED[name] = (stack, stack.enter_context(start()))
    try:
        yield _SHARED[name][1]
    finally:
        if not _used_after_this_module(request, name) and name in _SHARED:
            _SHARED.pop(name)[0].close()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    """What is still shared when a run ends early (``-x``, an interrupt) stops here."""
    while _SHARED:
        _SHARED.popitem()[1][0].close()


TINY_CHAT = "tiny-chat"


@pytest.fixture(scope="module")
def tiny_chat_service(request, tiny_base, models_dir, tmp_path_factory):
    """ONE service for the modules that use it (tests/test_serving.py's ``served`` and the modules that import it):
    adapter ``tiny-chat`` v1 at production and v2 registered, on base tiny-llama, at most 6 requests in flight,
    ledger in its home, ``/metrics`` also on a port of its own without a key. Yields ``{url, metrics_url, v1, v2,
    home, log}``. A test that moves the alias moves it back."""

    @contextlib.contextmanager
    def start():
        home = tmp_path_factory.mktemp("serve-home")
        with service_env(home, models_dir):
            from mlflow import MlflowClient

            work = tmp_path_factory.mktemp("adapters")
            v1 = register_version(TINY_CHAT, make_adapter(tiny_base, work / "v1", seed=1), tiny_base)
            v2 = register_version(TINY_CHAT, make_adapter(tiny_base, work / "v2", seed=2), tiny_base)
            MlflowClient().set_registered_model_alias(TINY_CHAT, "production", v1)
        metrics_port = free_port()
        with running_service(
            home,
            models_dir,
            written_by="tests/conftest.py: tiny_chat_service",
            adapters=[f"{TINY_CHAT}@production"],
            metrics_port=metrics_port,
            poll_interval_s=1,
            engine={"max_model_len": 2048, "max_lora_rank": 8, "max_loras": 2, "dtype": "bfloat16", "max_num_seqs": 16},
            limits={"max_body_bytes": 65536, "max_concurrency": 6, "retry_after_s": 2},
        ) as service:
            yield {
                "url": service.url,
                "metrics_url": f"http://127.0.0.1:{metrics_port}",
                "v1": v1,
                "v2": v2,
                "home": home,
                "log": service.log,
            }

    with shared(request, start) as value:
        yield value


@pytest.fixture(scope="module")
def base_service(request, tiny_base, models_dir, tmp_path_factory):
    """ONE service on base tiny-llama with no adapter for the modules that use it (tests/test_fuzz.py,
    tests/test_jobs_served.py): the fine-tuning API mounted beside inference, its jobs trained with
    tests/test_jobs_api.py's ``TRAIN`` and gated with its ``POLICY`` (the real executor: ``ftops train`` and ``ftops
    gate`` as child processes); ``max_model_len`` 512 bounds what the engine generates. Yields ``{url, home, log, pid}``
    (``pid``: the ``ftops serve`` process, the root of the service's process tree)."""

    @contextlib.contextmanager
    def start():
        from test_jobs_api import POLICY, TRAIN

        home = tmp_path_factory.mktemp("base-service-home")
        (home / "train.yaml").write_text(TRAIN)
        (home / "policy.yaml").write_text(POLICY)
        with running_service(
            home,
            models_dir,
            written_by="tests/conftest.py: base_service",
            poll_interval_s=2,
            engine={"max_model_len": 512, "max_lora_rank": 8, "max_loras": 2, "dtype": "bfloat16", "max_num_seqs": 8},
            limits={"max_body_bytes": 65536, "max_concurrency": 8, "retry_after_s": 2},
            jobs={
                "train_config": str(home / "train.yaml"),
                "policy": str(home / "policy.yaml"),
                "poll_s": 0.5,
                "gate_options": ["--engine", "transformers", "--max-new-tokens", "4", "--no-regression"],
            },
        ) as service:
            yield {"url": service.url, "home": home, "log": service.log, "pid": service.proc.pid}

    with shared(request, start) as value:
        yield value


@pytest.fixture(scope="module")
def gate_engine(request, tiny_base):
    """ONE in-process vLLM CPU engine for the modules that use it (tests/test_golden.py, tests/test_cpu_lora.py):
    ftops's gate engine (``ftops.registry.engines.VllmEngine``: bf16, LoRA on with 2 slots, seed 0) on the tiny base,
    ``max_model_len`` 256. Started with VLLM_ALLOW_INSECURE_SERIALIZATION, so that a test may inspect its workers with
    ``collective_rpc``. Each test gives its adapters LoRA ids of its own (vLLM caches an adapter by id) and, where
    numbers are pinned, prompts of its own (vLLM reuses the KV cache of a prompt it has seen)."""

    @contextlib.contextmanager
    def start():
        from ftops.registry.engines import VllmEngine

        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # read by this process and the engine's, at start-up
            # pinned to bf16 whatever the machine: test_golden's token ids and test_cpu_lora's stacks are bf16's
            engine = VllmEngine(tiny_base.path, max_lora_rank=8, max_model_len=256, dtype="bfloat16")
        try:
            yield engine
        finally:
            engine.close()

    with shared(request, start) as value:
        yield value
