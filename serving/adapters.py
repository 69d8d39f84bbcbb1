"""Adapters come from the registry only: resolve ``NAME@ALIAS`` (or a pinned version) through MLflow, check that the
version was proven (gate verdict ``pass``, not revoked, trained on the served base), download its ``adapter/``
folder, verify its sha256 manifest and that the manifest's digest is the one the gate tagged.

Failures come in two kinds: :class:`TransientError` (MLflow, the network or the disk failed; retry later) and
:class:`RefusedError` (this version must not be served; retrying will not change that)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ftops import settings
from ftops.adapter import (
    TAG_ADAPTER_DIGEST,
    TAG_BASE_NAME,
    TAG_BASE_SHA256,
    TAG_GATE_VERDICT,
    TAG_REVOKED_AT,
    TAG_REVOKED_BY,
    base_mismatch,
    check_base,
    read_adapter,
    revocation,
    short_error,
)
from ftops.base import BaseModel
from ftops.errors import FtopsError, TransientError, UsageError
from ftops.manifest import folder_digest
from ftops.names import check_name


class RefusedError(FtopsError):
    """The version must not be served (not gated, revoked, another base, digest mismatch, not in the registry)."""


class UnknownVersion(RefusedError):
    """The registry has no such version."""


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


def discover(alias: str, base: BaseModel, seen: dict[tuple[str, str], bool] | None = None) -> list[str]:
    """Names of the registered models whose ``@alias`` version was trained on ``base`` (its ``ftops.base.sha256``
    version tag), sorted. ``seen`` caches ``(name, version) -> on this base`` between calls (a version's tags do not
    change base). Whether each may be served is :func:`refusal`'s to say, when it is followed. Raises
    :class:`TransientError` when the registry cannot be read."""
    seen = {} if seen is None else seen
    found: list[str] = []
    token = None
    try:
        client = settings.mlflow_client()
        while True:
            page = client.search_registered_models(max_results=200, page_token=token)
            for model in page:
                version = (model.aliases or {}).get(alias)
                if version is None:
                    continue
                key = (model.name, str(version))
                if key not in seen:
                    try:
                        on_base = version_tags(model.name, str(version)).get(TAG_BASE_SHA256) == base.sha256
                    except (RefusedError, UsageError):  # a name ftops would not serve, or the version went meanwhile
                        on_base = False
                    seen[key] = on_base
                if seen[key]:
                    found.append(model.name)
            token = page.token
            if not token:
                return sorted(found)
    except TransientError:
        raise
    except Exception as e:  # MlflowException, connection errors, a locked or missing SQLite file, ...
        raise TransientError(f"models at @{alias}: cannot search the registry ({short_error(e)})") from e


def version_tags(name: str, version: str) -> dict[str, str]:
    """The registry tags of ``name`` version ``version``. Raises :class:`RefusedError` when there is no such
    version, :class:`TransientError` when the registry cannot be read."""
    from mlflow.exceptions import MlflowException

    check_name(name, "registered model name")
    if not version.isdigit():
        raise RefusedError(f"{name}:{version}: a registry version is a number")
    try:
        return dict(settings.mlflow_client().get_model_version(name, version).tags or {})
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise UnknownVersion(f"{name} version {version} is not in the registry") from e
        raise TransientError(f"{name} version {version}: cannot read the registry ({short_error(e)})") from e
    except Exception as e:
        raise TransientError(f"{name} version {version}: cannot read the registry ({short_error(e)})") from e


def refusal(name: str, version: str, tags: dict[str, str], base: BaseModel) -> str | None:
    """Why ``name`` version ``version`` (with registry ``tags``) must not be served on ``base``; None if it may."""
    if (why := revocation(tags)) is not None:
        by, at = tags.get(TAG_REVOKED_BY), tags.get(TAG_REVOKED_AT)
        who = f" by {by}" if by else ""
        when = f" at {at}" if at else ""
        return f"{name} version {version} was revoked{who}{when} ({why}); a revoked version is never served"
    verdict = tags.get(TAG_GATE_VERDICT)
    if verdict != "pass":
        return (
            f"{name} version {version} has no passing gate verdict ({TAG_GATE_VERDICT}={verdict or 'unset'}); "
            f"only versions `ftops gate` passed are served"
        )
    if not tags.get(TAG_ADAPTER_DIGEST):
        return (
            f"{name} version {version} carries no {TAG_ADAPTER_DIGEST} tag, so its files cannot be checked against "
            "what the gate verified; register it with `ftops gate`"
        )
    tagged = {"name": tags.get(TAG_BASE_NAME), "sha256": tags.get(TAG_BASE_SHA256)}
    if tagged["sha256"]:  # a version without the tag is checked against its manifest when it is fetched
        return base_mismatch(f"{name} version {version}", tagged, base)
    return None


def fetch_adapter(name: str, version: str, base: BaseModel) -> ResolvedAdapter:
    """Check, download and verify version ``version`` of registered model ``name`` for ``base``.

    Raises :class:`RefusedError` if it must not be served (see :func:`refusal`; its manifest does not match its
    files, names other base weights, or its digest is not the one the gate tagged) and :class:`TransientError` if
    the registry or the artifact store could not be read."""
    import mlflow  # heavy: imported when an adapter is fetched, not when the service module loads

    tags = version_tags(name, version)
    if (reason := refusal(name, version, tags, base)) is not None:
        raise RefusedError(reason)
    dst = cache_dir() / name / version
    try:
        if dst.is_dir():
            shutil.rmtree(dst)  # always re-download: the registry is the source of truth
        dst.mkdir(parents=True, exist_ok=True)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)))
    except Exception as e:  # MlflowException, OSError, connection errors of the artifact store
        raise TransientError(f"{name} version {version}: cannot download the adapter ({short_error(e)})") from e
    if not any(local.iterdir()):  # MLflow returns an empty folder when the store has nothing at that path (now)
        raise TransientError(f"{name} version {version}: the artifact store returned no files for it")
    try:
        manifest = read_adapter(local)
    except FtopsError as e:
        raise RefusedError(f"{name} version {version}: {e}") from e
    except OSError as e:
        raise TransientError(f"{name} version {version}: cannot read the downloaded adapter ({short_error(e)})") from e
    check_base(f"{name} version {version}", manifest["base"], base, error=RefusedError)
    tagged, digest = tags[TAG_ADAPTER_DIGEST], folder_digest(manifest["files"])
    if digest != tagged or manifest.get("digest") != tagged:
        raise RefusedError(
            f"{name} version {version}: the downloaded adapter's digest {digest[:12]} is not the "
            f"{TAG_ADAPTER_DIGEST} {tagged[:12]} the gate verified; its files were replaced after the gate, "
            "refusing to load it"
        )
    return ResolvedAdapter(name=name, version=version, path=local, lora_rank=(manifest.get("lora") or {}).get("r"))
