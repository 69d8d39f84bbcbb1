"""The registry lifecycle: ``promote`` (staging -> production), ``rollback`` and ``models``.

Aliases carry the lifecycle; MLflow keeps each alias on exactly one version. The production history is the
registered-model tag ``ftops.production.history``: a JSON list of the versions that held ``production``, oldest first,
the current one last. A move made in the MLflow UI is noticed on the next promote or rollback (the current alias is
appended when it is not the last entry), so rollback always returns to the version that held production before.
Rollback revokes the version it leaves (tags ``ftops.revoked*`` on the version: who, why, when): serving never loads
it again and promote refuses it.
Every read-modify-write of alias + history happens under :func:`registry_lock`, so two promotions at once serialize,
from one machine or several (``registry/lock.py`` says which lock holds where).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ftops import adapter as fa
from ftops import settings
from ftops.adapter import alias_version
from ftops.env import FTOPS_ACTOR
from ftops.errors import FtopsError
from ftops.names import check_name
from ftops.registry.eval import METRICS
from ftops.registry.gate import (
    PRODUCTION,
    STAGING,
    TAG_POLICY_RULES,
    metric_tags,
    production_metrics,
    registry_error,
)
from ftops.registry.lock import LOCK_MODEL, registry_lock
from ftops.registry.policy import Policy, check_policy, load_policy

TAG_HISTORY = "ftops.production.history"


def _registered_model(client, name: str):
    from mlflow.exceptions import MlflowException  # heavy: mlflow loads when the registry is read

    check_name(name, "registered model name")
    try:
        return client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise registry_error(name, "the registered model", e) from e
        known = ", ".join(m.name for m in client.search_registered_models() if m.name != LOCK_MODEL) or "none"
        raise FtopsError(
            f"no registered model {name!r} (known: {known}); `ftops gate RUN_ID --name {name}` registers one"
        ) from None


def production_history(client, name: str) -> list[str]:
    """The versions that held ``production``, oldest first, reconciled with the current alias."""
    model = client.get_registered_model(name)
    raw = model.tags.get(TAG_HISTORY, "[]")
    try:
        history = [str(v) for v in json.loads(raw)]
    except (ValueError, TypeError) as e:
        raise FtopsError(
            f"registered model {name}: tag {TAG_HISTORY} is not a JSON list ({e}); fix or delete it in the MLflow UI"
        ) from e
    current = alias_version(name, PRODUCTION, client)
    if current is not None and (not history or history[-1] != current):
        history.append(current)  # production was moved outside ftops (MLflow UI): that is a promotion too
    return history


@dataclass
class Move:
    """What a promote or rollback did."""

    name: str
    version: str
    previous: str | None
    history: list[str]
    checks: list[dict]
    revoked: dict | None = None  # rollback: the version it left and its revocation tags

    def as_dict(self) -> dict:
        out = {
            "name": self.name,
            "version": self.version,
            "previous": self.previous,
            "history": self.history,
            "checks": self.checks,
        }
        if self.revoked is not None:
            out["revoked"] = self.revoked
        return out


def actor() -> str:
    """Who is acting: ``$FTOPS_ACTOR`` (e.g. a CI job's identity), else ``user@host``."""
    if FTOPS_ACTOR.is_set():
        return FTOPS_ACTOR.get()
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment and no passwd entry (some containers)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _revoked(mv) -> dict | None:
    """A version's revocation as ``{reason, by, at}``, or None when it is not revoked."""
    reason = fa.revocation(mv.tags)
    if reason is None:
        return None
    return {"reason": reason, "by": mv.tags.get(fa.TAG_REVOKED_BY), "at": mv.tags.get(fa.TAG_REVOKED_AT)}


def _stored_policy(mv) -> Policy | None:
    raw = mv.tags.get(TAG_POLICY_RULES)
    if not raw:
        return None
    return Policy.model_validate({"name": mv.tags.get(fa.TAG_GATE_POLICY, "stored"), "rules": json.loads(raw)})


def promote(name: str, to: str = PRODUCTION, version: str | None = None, policy_path: str | Path | None = None) -> Move:
    """Move ``production`` to ``version`` (default: the version at ``staging``) after re-checking it against the
    current production version: it passed the gate, adapts the same base, and meets the policy's
    ``max_drop_vs_production`` rules (the stored rules it passed, or ``policy_path``)."""
    if to != PRODUCTION:
        raise FtopsError(f"--to {to!r}: only 'production' is promoted to; `ftops gate` sets '{STAGING}'")
    client = settings.mlflow_client()
    _registered_model(client, name)
    policy = load_policy(policy_path, METRICS) if policy_path else None
    with registry_lock():
        version = str(version) if version else alias_version(name, STAGING, client)
        if version is None:
            raise FtopsError(
                f"model {name} has no version at '{STAGING}'; pass one with `ftops gate RUN_ID --name {name}`"
            )
        mv = _version(client, name, version)
        if mv.tags.get(fa.TAG_GATE_VERDICT) != "pass":
            raise FtopsError(f"{name} version {version} has no passing gate verdict; only gated versions are promoted")
        revoked = _revoked(mv)
        if revoked is not None:
            raise FtopsError(
                f"{name} version {version} is revoked ({revoked['reason']}; by {revoked['by'] or '?'} at "
                f"{revoked['at'] or '?'}): promote another version, or delete its tag {fa.TAG_REVOKED} in the "
                "MLflow UI if it may serve again"
            )
        history = production_history(client, name)
        current = history[-1] if history else None
        if current == version:
            return Move(name, version, current, history, [])
        checks = []
        if current is not None:
            prod = client.get_model_version(name, current)
            if prod.tags.get(fa.TAG_BASE_SHA256) != mv.tags.get(fa.TAG_BASE_SHA256):
                raise FtopsError(
                    f"{name} version {version} adapts base {mv.tags.get(fa.TAG_BASE_NAME)} "
                    f"{str(mv.tags.get(fa.TAG_BASE_SHA256))[:12]}, production version {current} adapts "
                    f"{prod.tags.get(fa.TAG_BASE_NAME)} {str(prod.tags.get(fa.TAG_BASE_SHA256))[:12]}: "
                    "serving runs one base; register the new base under another model name"
                )
            rules = policy or _stored_policy(mv)
            if rules is not None:
                relative = (
                    Policy(
                        name=rules.name,
                        rules=[r for r in rules.rules if r.max_drop_vs_production is not None],
                    )
                    if any(r.max_drop_vs_production is not None for r in rules.rules)
                    else None
                )
                if relative is not None:
                    metrics = metric_tags(mv.tags)
                    _, prod_metrics = production_metrics(client, name)
                    results = check_policy(relative, metrics, prod_metrics)
                    checks = [r.as_dict() for r in results]
                    failed = [r for r in results if not r.passed]
                    if failed:
                        detail = "; ".join(f"{r.rule}: {r.value} vs production {r.production_value}" for r in failed)
                        raise FtopsError(
                            f"{name} version {version} is worse than production version {current}: {detail}"
                        )
        history.append(version)
        client.set_registered_model_alias(name, PRODUCTION, version)
        client.set_registered_model_tag(name, TAG_HISTORY, json.dumps(history))
    return Move(name, version, current, history, checks)


def rollback(name: str, reason: str | None = None) -> Move:
    """Return ``production`` to the version that held it before the current one, and revoke the version it leaves
    (``reason``, default: rolled back from production by whom), so that nothing serves it again."""
    client = settings.mlflow_client()
    _registered_model(client, name)
    by = actor()
    with registry_lock():
        history = production_history(client, name)
        if len(history) < 2:
            current = history[-1] if history else "none"
            raise FtopsError(f"{name}: no earlier production version to roll back to (production: {current})")
        current, previous = history[-1], history[-2]
        earlier = _revoked(_version(client, name, previous))
        if earlier is not None:
            raise FtopsError(
                f"{name}: the previous production version {previous} is revoked ({earlier['reason']}); "
                f"`ftops promote {name} --to production --version N` moves production to another version"
            )
        revoked = {
            fa.TAG_REVOKED: "true",
            fa.TAG_REVOKED_BY: by,
            fa.TAG_REVOKED_REASON: reason or f"rolled back from production by {by}",
            fa.TAG_REVOKED_AT: datetime.now(UTC).isoformat(timespec="seconds"),
        }
        history.pop()
        client.set_registered_model_alias(name, PRODUCTION, previous)
        client.set_registered_model_tag(name, TAG_HISTORY, json.dumps(history))
        # after the move, so production never points at a revoked version that serving would refuse
        for key, value in revoked.items():
            client.set_model_version_tag(name, current, key, value)
    return Move(
        name,
        previous,
        current,
        history,
        [],
        {"version": current, "reason": revoked[fa.TAG_REVOKED_REASON], "by": by, "at": revoked[fa.TAG_REVOKED_AT]},
    )


def _version(client, name: str, version: str):
    from mlflow.exceptions import MlflowException  # heavy: mlflow loads when the registry is read

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise FtopsError(f"{name} has no version {version!r}; `ftops models {name}` lists them") from None


def list_models(name: str | None = None) -> list[dict]:
    """Registered models with their versions, aliases, gate verdicts and key metrics (newest version first)."""
    client = settings.mlflow_client()
    models = [_registered_model(client, name)] if name else client.search_registered_models()
    models = [m for m in models if m.name != LOCK_MODEL]  # the registry lock on a tracking server, while held
    out = []
    for model in models:
        versions = client.search_model_versions(f"name='{model.name}'")
        aliases: dict[str, list[str]] = {}
        for alias, v in (model.aliases or {}).items():
            aliases.setdefault(str(v), []).append(alias)
        rows = []
        for mv in sorted(versions, key=lambda m: int(m.version), reverse=True):
            t = mv.tags
            metric = metric_tags(t)
            rows.append(
                {
                    "version": str(mv.version),
                    "aliases": sorted(aliases.get(str(mv.version), [])),
                    "verdict": t.get(fa.TAG_GATE_VERDICT),
                    "policy": t.get(fa.TAG_GATE_POLICY),
                    "run_id": mv.run_id,
                    "base": t.get(fa.TAG_BASE_NAME),
                    "source": mv.source,
                    "metrics": metric,
                    "revoked": _revoked(mv),
                }
            )
        out.append(
            {
                "name": model.name,
                "versions": rows,
                "production_history": json.loads(model.tags.get(TAG_HISTORY, "[]") or "[]"),
            }
        )
    return out
