"""Shared fixtures.

- ``ftops_home``: a fresh ``FTOPS_HOME`` (MLflow on a temporary SQLite store + local artifacts) per test.
- ``smollm2``: the record of the real SmolLM2-135M-Instruct base that ``make setup`` imported.
- ``tiny_base``: a tiny random Llama with the SmolLM2 tokenizer, imported as base ``tiny-llama`` once per session.
"""

from __future__ import annotations

import os
from pathlib import Path

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
    from ftops.base import import_base
    from ftops.tiny import build_tiny_llama

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
    from ftops.registry.eval import TransformersEngine

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


def start_mlflow_server(backend_uri: str, folder: Path, workers: int = 1):
    """A real ``mlflow server`` process on ``backend_uri`` (artifacts and its log under ``folder``), answering
    ``/health``; returns ``(url, process)``. The caller stops it with :func:`stop_mlflow_server`, e.g. to see what
    a registry that stopped answering does."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    log_path = folder / f"mlflow-server-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                *(str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", backend_uri),
                *("--artifacts-destination", (folder / "server-artifacts").as_uri()),
                *("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):  # a give-up point for a loaded machine (~5 min), not a timing assertion
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited {proc.returncode}: {log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return url, proc
        except OSError:
            time.sleep(0.5)
    stop_mlflow_server(proc)
    pytest.fail(f"mlflow server on {backend_uri} did not answer {url}/health: {log_path.read_text()}")


def stop_mlflow_server(proc) -> None:
    """Stop a server from :func:`start_mlflow_server` and every process it started (uvicorn workers, job consumers):
    they share its process group."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group outlived its leader
    except ProcessLookupError:
        pass
