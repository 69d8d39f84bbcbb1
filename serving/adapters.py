"""Adapters come from the registry only: resolve ``NAME@ALIAS`` (or a pinned version) through MLflow, download the
version's ``adapter/`` folder, verify its sha256 manifest, and refuse it unless it was trained on the served base."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftops import settings
from ftops.adapter import TAG_BASE_SHA256, download_adapter
from ftops.base import BaseModel
from ftops.errors import FtopsError
from ftops.names import check_name


@dataclass(frozen=True)
class ResolvedAdapter:
    """One registered model version, downloaded and verified."""

    name: str
    """Registered model name."""
    version: str
    """Registry version number."""
    path: Path
    """Local, verified adapter folder."""
    lora_rank: int | None
    """The adapter's LoRA rank from its manifest."""

    @property
    def served_name(self) -> str:
        """The name the engine knows it by: ``NAME:VERSION``."""
        return f"{self.name}:{self.version}"


def cache_dir() -> Path:
    return settings.home() / "serving" / "adapters"


def alias_version(name: str, alias: str) -> str | None:
    """The version ``alias`` points at now; None when the model or alias does not exist (yet)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def version_exists(name: str, version: str) -> bool:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().get_model_version(name, version)
    except MlflowException:
        return False
    return True


def fetch_adapter(name: str, version: str, base: BaseModel) -> ResolvedAdapter:
    """Download and verify version ``version`` of registered model ``name``; raises :class:`FtopsError` if it is
    not a valid adapter for ``base`` (its manifest or its registry tag names other base weights)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    check_name(name, "registered model name")
    if not version.isdigit():
        raise FtopsError(f"{name}:{version}: a registry version is a number")
    try:
        mv = MlflowClient().get_model_version(name, version)
    except MlflowException as e:
        raise FtopsError(f"{name} version {version}: not in the registry ({e.message})") from e
    tagged = (mv.tags or {}).get(TAG_BASE_SHA256)
    if tagged and tagged != base.sha256:
        raise FtopsError(
            f"{name} version {version} was trained on base sha256 {tagged[:12]}, but this service serves "
            f"{base.name} ({base.sha256[:12]}); serve the base it was trained on"
        )
    dst = cache_dir() / name / version
    if dst.is_dir():
        import shutil

        shutil.rmtree(dst)  # always re-download: the registry is the source of truth
    dst.mkdir(parents=True, exist_ok=True)
    folder, manifest = download_adapter(f"models:/{name}/{version}", dst)
    base_sha = manifest["base"].get("sha256")
    if base_sha != base.sha256:
        raise FtopsError(
            f"{name} version {version}: adapter manifest names base {manifest['base'].get('name')!r} "
            f"sha256 {str(base_sha)[:12]}, but this service serves {base.name} ({base.sha256[:12]}); "
            "refusing to load it"
        )
    return ResolvedAdapter(name=name, version=version, path=folder, lora_rank=(manifest.get("lora") or {}).get("r"))
