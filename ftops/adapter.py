"""The adapter artifact: the one contract between training, the registry and serving.

A training run logs its LoRA adapter as the MLflow artifact folder ``adapter/``::

    adapter/adapter_model.safetensors   PEFT weights (safetensors only)
    adapter/adapter_config.json         PEFT config (rank, alpha, target modules)
    adapter/tokenizer.json, tokenizer_config.json, chat_template.jinja
    adapter/manifest.json               sha256 of every file + ``base`` {name, sha256} + ``lora`` {r, target_modules}

Registered model versions point at ``runs:/<run_id>/adapter`` and carry the lineage tags below. Loaders call
:func:`download_adapter`, which verifies the manifest before anything reads the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftops import settings
from ftops.errors import FtopsError, TransientError
from ftops.manifest import verify_manifest, write_manifest

ARTIFACT_PATH = "adapter"

# Lineage tags on the training run and on every registered model version (../shared/DESIGN.md).
TAG_RUN_ID = "ftops.run_id"
TAG_BASE_NAME = "ftops.base.name"
TAG_BASE_SHA256 = "ftops.base.sha256"
TAG_QUANTIZATION = "ftops.quantization"
TAG_LORA_R = "ftops.lora.r"
TAG_LORA_TARGETS = "ftops.lora.target_modules"
TAG_TRAINABLE_PARAMS = "ftops.trainable_params"
TAG_TRAINABLE_SHARE = "ftops.trainable_share"
TAG_DATASET_PREFIX = "ftops.dataset."  # + "<split>.digest", e.g. ftops.dataset.train.digest
TAG_GATE_VERDICT = "ftops.gate.verdict"  # "pass" | "fail"
TAG_GATE_POLICY = "ftops.gate.policy"
TAG_METRIC_PREFIX = "ftops.metric."  # + metric name: the metrics the gate judged on
TAG_ADAPTER_DIGEST = "ftops.adapter.digest"  # the manifest's digest as the gate verified it; loaders compare
TAG_EVAL_SETTINGS = "ftops.eval.settings_sha256"  # hash of the evaluation settings the judged metrics came from
TAG_REVOKED = "ftops.revoked"  # "true" on a version rollback left (or revoked by hand): never served again
TAG_REVOKED_BY = "ftops.revoked.by"
TAG_REVOKED_REASON = "ftops.revoked.reason"
TAG_REVOKED_AT = "ftops.revoked.at"


def revocation(tags: dict) -> str | None:
    """Why a model version is revoked (its ``ftops.revoked.reason``), or None when it is not: ``tags`` are the
    version's tags. Rollback writes them; serving and promote refuse a revoked version."""
    if str(tags.get(TAG_REVOKED, "")).strip().lower() != "true":
        return None
    return tags.get(TAG_REVOKED_REASON) or "revoked (no reason recorded)"


def base_mismatch(what: str, trained_on: dict, base) -> str | None:
    """Why ``what`` (an adapter, a run, a registered version) does not adapt ``base`` (an imported
    :class:`ftops.base.BaseModel`), or None when it does. ``trained_on`` is ``{"name", "sha256"}`` of the weights it
    was trained on: a manifest's ``base``, or a version's ``ftops.base.*`` tags. The one check and the one message
    for every caller (export, eval, gate, serving, advise)."""
    sha = trained_on.get("sha256")
    if sha == base.sha256:
        return None
    return (
        f"{what} was trained on base sha256 {str(sha)[:12]} ({trained_on.get('name') or 'unnamed'}), but the base "
        f"here is {base.name} ({base.sha256[:12]}); use the base it was trained on (`ftops base import`), or retrain"
    )


def check_base(what: str, trained_on: dict, base, error: type[FtopsError] = FtopsError) -> None:
    """Raise ``error`` with :func:`base_mismatch`'s message when ``what`` does not adapt ``base``."""
    if (why := base_mismatch(what, trained_on, base)) is not None:
        raise error(why)


def short_error(e: BaseException) -> str:
    """One line naming an exception: its type and its first line."""
    text = str(getattr(e, "message", None) or e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


def alias_version(name: str, alias: str, client=None) -> str | None:
    """The version ``name@alias`` points at now; None when the model or the alias does not exist (yet).

    Any other failure (server unreachable, permission denied, a broken store) raises :class:`TransientError`
    naming the model: "cannot read the registry" must never pass for "no such version"."""
    from mlflow.exceptions import MlflowException

    try:
        return str((client or settings.mlflow_client()).get_model_version_by_alias(name, alias).version)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        error = e
    except Exception as e:  # connection errors, a locked or missing SQLite file, SQLAlchemy errors MLflow did not wrap
        error = e
    raise TransientError(
        f"{name}@{alias}: cannot read the registry ({short_error(error)}); nothing was changed: check that the "
        "registry (MLFLOW_REGISTRY_URI / MLFLOW_TRACKING_URI) answers and retry"
    ) from error


def save_adapter(model, tokenizer, out: Path, base_name: str, base_sha256: str, quantization: str) -> dict:
    """Save a PEFT model's adapter, its tokenizer and chat template into ``out`` with a sha256 manifest.

    Returns the manifest. ``model`` is a ``peft.PeftModel``; only safetensors and JSON are written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    for p in out.iterdir():  # README.md from PEFT, anything not safetensors/JSON/tokenizer text
        if p.name == "README.md":
            p.unlink()
    config = json.loads((out / "adapter_config.json").read_text())
    targets = config.get("target_modules") or []
    lora = {"r": config.get("r"), "lora_alpha": config.get("lora_alpha"), "target_modules": sorted(targets)}
    return write_manifest(
        out, {"base": {"name": base_name, "sha256": base_sha256}, "quantization": quantization, "lora": lora}
    )


def read_adapter(folder: Path) -> dict:
    """Verify ``folder`` against its manifest and return the manifest (raises :class:`FtopsError`)."""
    folder = Path(folder)
    manifest = verify_manifest(folder)
    for required in ("adapter_model.safetensors", "adapter_config.json"):
        if required not in manifest["files"]:
            raise FtopsError(f"{folder}: not a LoRA adapter (no {required})")
    if "base" not in manifest:
        raise FtopsError(f"{folder}/manifest.json: no base model recorded; cannot check which weights it adapts")
    return manifest


def download_adapter(artifact_uri: str, dst: Path | None = None) -> tuple[Path, dict]:
    """Download an adapter folder (``runs:/ID/adapter``, ``models:/NAME/VERSION`` or any MLflow artifact URI),
    verify it, and return ``(local_folder, manifest)``."""
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst) if dst else None)
    except Exception as e:  # MLflow raises MlflowException, OSError, ... for missing artifacts
        raise FtopsError(f"{artifact_uri}: cannot download the adapter ({e})") from e
    return Path(local), read_adapter(Path(local))
