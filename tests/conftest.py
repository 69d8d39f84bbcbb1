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
