"""Gate policies: YAML files of rules over evaluation metrics, each judged pass/fail with its values.

A policy (``registry/policies/default.yaml``)::

    name: default
    rules:
      - {metric: accuracy, min: 0.8}                     # absolute floor
      - {metric: format_compliance, min: 0.95}
      - {metric: retention, min: 0.95}                   # candidate regression score / base's
      - {metric: improvement, min: 0.05}                 # accuracy - base accuracy
      - {metric: accuracy, max_drop_vs_production: 0.02} # not worse than the current production version by > 0.02

Metric names are those :mod:`ftops.registry.eval` logs, without the ``eval.`` prefix
(see :data:`ftops.registry.eval.METRICS`).
A rule against production passes when there is no production version yet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from ftops.config import read_yaml, validate
from ftops.errors import FtopsError

POLICIES_DIR = Path(__file__).resolve().parent / "policies"
DEFAULT_POLICY = POLICIES_DIR / "default.yaml"


class Rule(BaseModel):
    """One threshold on one metric; exactly one of ``min``, ``max``, ``max_drop_vs_production``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str
    """An evaluation metric name without the ``eval.`` prefix, e.g. ``accuracy``, ``retention``."""
    min: float | None = None
    """The metric must be at least this (absolute floor, or a relative rule on ``improvement``/``retention``)."""
    max: float | None = None
    """The metric must be at most this (e.g. ``latency_s``)."""
    max_drop_vs_production: float | None = None
    """The metric may be lower than the current production version's by at most this much."""

    @model_validator(mode="after")
    def _one_threshold(self) -> Rule:
        given = [k for k in ("min", "max", "max_drop_vs_production") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of min, max, max_drop_vs_production (got {given or 'none'})")
        return self

    def describe(self) -> str:
        if self.min is not None:
            return f"{self.metric} >= {self.min:g}"
        if self.max is not None:
            return f"{self.metric} <= {self.max:g}"
        return f"{self.metric} >= production - {self.max_drop_vs_production:g}"


class Policy(BaseModel):
    """A named list of rules; a candidate passes when every rule passes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    """Recorded on the model version (tag ``ftops.gate.policy``)."""
    rules: list[Rule]
    """Checked in order; all must pass."""

    @model_validator(mode="after")
    def _not_empty(self) -> Policy:
        if not self.rules:
            raise ValueError("a policy needs at least one rule")
        return self


@dataclass(frozen=True)
class RuleResult:
    """A rule with the values it was judged on."""

    rule: str
    metric: str
    value: float | None
    threshold: float
    passed: bool
    production_value: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def load_policy(path: str | Path | None = None, known_metrics: frozenset[str] | None = None) -> Policy:
    """Read and check a policy YAML (default: ``registry/policies/default.yaml``).

    Raises :class:`FtopsError` naming the file and the field for malformed YAML, unknown keys, and rules naming a
    metric that is not in ``known_metrics``."""
    path = Path(path) if path else DEFAULT_POLICY
    policy = validate(Policy, read_yaml(path, "policy"), str(path), hint=f"policies ship in {POLICIES_DIR}")
    if known_metrics is not None:
        for i, rule in enumerate(policy.rules, 1):
            if rule.metric not in known_metrics:
                raise FtopsError(
                    f"{path}: rule {i} names metric {rule.metric!r}, which evaluation does not produce "
                    f"(known: {', '.join(sorted(known_metrics))})"
                )
    return policy


def check_policy(policy: Policy, metrics: dict[str, float], production: dict[str, float] | None) -> list[RuleResult]:
    """Judge every rule of ``policy`` on ``metrics`` (names without prefix); ``production`` holds the current
    production version's metrics, or None when there is none. A metric the run lacks fails its rule."""
    results = []
    for rule in policy.rules:
        value = metrics.get(rule.metric)
        if rule.min is not None:
            results.append(
                RuleResult(rule.describe(), rule.metric, value, rule.min, value is not None and value >= rule.min)
            )
        elif rule.max is not None:
            results.append(
                RuleResult(rule.describe(), rule.metric, value, rule.max, value is not None and value <= rule.max)
            )
        else:
            prod = (production or {}).get(rule.metric)
            if prod is None:  # nothing in production (or it was never judged on this metric): nothing to be worse than
                results.append(
                    RuleResult(
                        rule.describe() + " (no production version)",
                        rule.metric,
                        value,
                        rule.max_drop_vs_production,
                        value is not None,
                    )
                )
            else:
                floor = prod - rule.max_drop_vs_production
                results.append(
                    RuleResult(
                        rule.describe(),
                        rule.metric,
                        value,
                        floor,
                        value is not None and value >= floor,
                        production_value=prod,
                    )
                )
    return results
