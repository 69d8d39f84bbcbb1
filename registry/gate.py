"""``ftops gate RUN_ID``: judge a run against a policy; register what passes as a model version at alias ``staging``.

Order of work, so that bad input costs nothing: the run must exist, the policy must load and name only metrics
evaluation produces, the run must carry an adapter. Then the run is evaluated if it has no ``eval.*`` metrics yet,
every rule is judged (against the current production version for relative rules), and the report is logged on the run
(``gate/report.md``, ``gate/report.json``, tag ``ftops.gate.verdict``). On pass only, the adapter is checked against
its base (base name and sha256, LoRA rank, target modules that exist in the base, safetensors whose sha256 match the
manifest) and a model version is created with the lineage tags and the report as its description, then ``staging``
moves to it. On fail nothing is registered and no alias moves.
"""

from __future__ import annotations

import json
import struct
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from ftops import adapter as fa
from ftops.errors import FtopsError
from ftops.names import check_name
from ftops.registry import eval as ev
from ftops.registry.lock import registry_lock
from ftops.registry.policy import DEFAULT_POLICY, Policy, RuleResult, check_policy, load_policy

STAGING = "staging"
PRODUCTION = "production"
#: Version tag: the policy's rules as JSON, so that ``promote`` re-checks with the rules the version passed.
TAG_POLICY_RULES = "ftops.gate.policy.rules"
REPORT_MD = "gate/report.md"
#: Metrics tagged on every version besides the ones its policy judged (``ftops.metric.<name>``).
KEY_METRICS = frozenset(
    {
        "accuracy",
        "base.accuracy",
        "improvement",
        "field_accuracy",
        "format_compliance",
        "regression_score",
        "base.regression_score",
        "retention",
    }
)
REPORT_JSON = "gate/report.json"


@dataclass
class GateReport:
    """The verdict of one gate run and everything it was based on."""

    run_id: str
    model_name: str
    policy: str
    verdict: Literal["pass", "fail"]
    rules: list[RuleResult]
    metrics: dict[str, float]
    production_version: str | None = None
    lineage: dict[str, str] = field(default_factory=dict)
    version: str | None = None
    """The registered version (pass only)."""

    def as_dict(self) -> dict:
        return {**asdict(self), "rules": [r.as_dict() for r in self.rules]}

    def markdown(self) -> str:
        lines = [
            f"## Gate {self.verdict.upper()}: run `{self.run_id}`, policy `{self.policy}`",
            "",
            f"Compared with production version: {self.production_version or 'none'}.",
            "",
            "| rule | value | threshold | production | result |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in self.rules:
            value = "missing" if r.value is None else f"{r.value:.4g}"
            prod = "" if r.production_value is None else f"{r.production_value:.4g}"
            lines.append(f"| {r.rule} | {value} | {r.threshold:.4g} | {prod} | {'pass' if r.passed else '**FAIL**'} |")
        m = self.metrics
        lines += [
            "",
            "### Held-out and regression",
            "",
            "| metric | candidate | base |",
            "| --- | --- | --- |",
        ]
        for name in (
            "accuracy",
            "field_accuracy",
            "format_compliance",
            "regression_score",
            "judge_score",
            "answer_tokens",
            "latency_s",
        ):
            if name in m:
                base = m.get(f"base.{name}")
                lines.append(f"| {name} | {m[name]:.4g} | {'' if base is None else f'{base:.4g}'} |")
        for name in ("improvement", "field_improvement", "retention", "examples", "regression_items"):
            if name in m:
                lines.append(f"| {name} | {m[name]:.4g} | |")
        if self.lineage:
            lines += ["", "### Lineage", ""] + [f"- `{k}`: `{v}`" for k, v in sorted(self.lineage.items())]
        return "\n".join(lines) + "\n"


def production_metrics(client, name: str) -> tuple[str | None, dict[str, float]]:
    """The version at ``name@production`` and the metrics it was judged on (from its ``ftops.metric.*`` tags)."""
    version = alias_version(client, name, PRODUCTION)
    if version is None:
        return None, {}
    mv = client.get_model_version(name, version)
    return version, {
        k[len(fa.TAG_METRIC_PREFIX) :]: float(v) for k, v in mv.tags.items() if k.startswith(fa.TAG_METRIC_PREFIX)
    }


def alias_version(client, name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


def verify_lineage(run, adapter_dir: Path, manifest: dict) -> dict[str, str]:
    """Check the adapter against its base and the run's tags; return the version's lineage tags.

    Raises :class:`FtopsError` naming the first mismatch."""
    from ftops.base import load_base

    run_id = run.info.run_id
    tags = run.data.tags
    base_rec = manifest["base"]
    base = load_base(base_rec["name"])
    if base.sha256 != base_rec["sha256"]:
        raise FtopsError(
            f"run {run_id}: adapter was trained on {base.name} sha256 {base_rec['sha256'][:12]}, "
            f"the imported {base.name} is {base.sha256[:12]}; re-import the right base or retrain"
        )
    base.verify()
    for tag, expected in ((fa.TAG_BASE_NAME, base.name), (fa.TAG_BASE_SHA256, base.sha256)):
        if tag in tags and tags[tag] != expected:
            raise FtopsError(
                f"run {run_id}: tag {tag}={tags[tag]!r} disagrees with the adapter manifest ({expected!r})"
            )
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    rank, targets = config.get("r"), sorted(config.get("target_modules") or [])
    lora = manifest.get("lora", {})
    if lora.get("r") != rank or sorted(lora.get("target_modules") or []) != targets:
        raise FtopsError(
            f"run {run_id}: adapter_config.json (r={rank}, targets={targets}) disagrees with the manifest's lora {lora}"
        )
    if fa.TAG_LORA_R in tags and tags[fa.TAG_LORA_R] != str(rank):
        raise FtopsError(f"run {run_id}: tag {fa.TAG_LORA_R}={tags[fa.TAG_LORA_R]} but the adapter has rank {rank}")
    base_keys = [k for f in sorted(Path(base.path).glob("*.safetensors")) for k in _safetensors_header(f)]
    missing = [t for t in targets if not any(k.endswith(f".{t}.weight") for k in base_keys)]
    if missing:
        raise FtopsError(f"run {run_id}: LoRA target modules {missing} do not exist in base {base.name}")
    header = _safetensors_header(adapter_dir / "adapter_model.safetensors")
    a_shapes = [v["shape"] for k, v in header.items() if "lora_A" in k]
    if not a_shapes:
        raise FtopsError(f"run {run_id}: adapter_model.safetensors holds no lora_A weights")
    if any(s[0] != rank for s in a_shapes):
        raise FtopsError(
            f"run {run_id}: adapter weights have rank {sorted({s[0] for s in a_shapes})}, config says {rank}"
        )
    lineage = {
        fa.TAG_RUN_ID: run_id,
        fa.TAG_BASE_NAME: base.name,
        fa.TAG_BASE_SHA256: base.sha256,
        fa.TAG_QUANTIZATION: str(manifest.get("quantization") or tags.get(fa.TAG_QUANTIZATION, "none")),
        fa.TAG_LORA_R: str(rank),
        fa.TAG_LORA_TARGETS: ",".join(targets),
        fa.TAG_ADAPTER_DIGEST: manifest["digest"],
    }
    for k, v in tags.items():
        if k.startswith(fa.TAG_DATASET_PREFIX) or k in (fa.TAG_TRAINABLE_PARAMS, fa.TAG_TRAINABLE_SHARE):
            lineage[k] = v
    return lineage


def _needs_evaluation(policy: Policy, metrics: dict[str, float], config: ev.EvalConfig) -> bool:
    """No evaluation on the run yet, or one without the regression suite / judge that this policy and config need."""
    if "accuracy" not in metrics:
        return True
    missing = {r.metric for r in policy.rules} - metrics.keys()
    regression = {"regression_score", "base.regression_score", "retention", "regression_items"}
    judge = {"judge_score", "base.judge_score", "judge_improvement"}
    return bool((missing & regression and config.regression) or (missing & judge and config.judge_base_url))


def default_model_name(run) -> str:
    """``ftops.model_name`` from the run's tags, else ``<base>-lora``."""
    tags = run.data.tags
    return tags.get("ftops.model_name") or f"{tags.get(fa.TAG_BASE_NAME, 'ftops')}-lora"


def gate(
    run_id: str,
    policy_path: str | Path | None = None,
    name: str | None = None,
    eval_config: ev.EvalConfig | None = None,
    engine: ev.Engine | None = None,
    reevaluate: bool = False,
) -> GateReport:
    """Judge run ``run_id`` against the policy; on pass register a version at ``staging``. Returns the report
    (``verdict`` says which); raises :class:`FtopsError` for bad input, with nothing registered."""
    run = ev.get_run(run_id)
    policy: Policy = load_policy(policy_path, ev.METRICS)
    name = check_name(name or default_model_name(run), "registered model name")
    client = ev._client()
    with tempfile.TemporaryDirectory(prefix="ftops-gate-") as tmp:
        adapter_dir, manifest = ev.fetch_adapter(run_id, Path(tmp) / "adapter")
        metrics = {} if reevaluate else ev.logged_metrics(run_id)
        if _needs_evaluation(policy, metrics, eval_config or ev.EvalConfig()):
            metrics = ev.evaluate(run_id, eval_config, engine).metrics
        prod_version, prod_metrics = production_metrics(client, name)
        results = check_policy(policy, metrics, prod_metrics if prod_version else None)
        verdict: Literal["pass", "fail"] = "pass" if all(r.passed for r in results) else "fail"
        report = GateReport(run_id, name, policy.name, verdict, results, metrics, prod_version)
        if verdict == "pass":
            report.lineage = verify_lineage(run, adapter_dir, manifest)
    client.set_tag(run_id, fa.TAG_GATE_VERDICT, verdict)
    client.set_tag(run_id, fa.TAG_GATE_POLICY, policy.name)
    client.log_text(run_id, report.markdown(), REPORT_MD)
    client.log_dict(run_id, report.as_dict(), REPORT_JSON)
    if verdict == "fail":
        return report

    tagged = {r.metric for r in results} | KEY_METRICS  # the rest stays on the run and in gate/report.json
    tags = {
        **report.lineage,
        fa.TAG_GATE_VERDICT: "pass",
        fa.TAG_GATE_POLICY: policy.name,
        TAG_POLICY_RULES: json.dumps([r.model_dump(exclude_none=True) for r in policy.rules]),
        **{fa.TAG_METRIC_PREFIX + k: repr(float(metrics[k])) for k in sorted(tagged) if k in metrics},
    }
    with registry_lock():
        ensure_registered_model(client, name)
        mv = client.create_model_version(
            name,
            source=f"runs:/{run_id}/{fa.ARTIFACT_PATH}",
            run_id=run_id,
            tags=tags,
            description=report.markdown(),
        )
        client.set_registered_model_alias(name, STAGING, mv.version)
    report.version = str(mv.version)
    client.log_dict(run_id, report.as_dict(), REPORT_JSON)
    return report


def ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name,
            description="LoRA adapter registered by `ftops gate`; aliases `staging` and `production` carry the "
            "lifecycle (`ftops promote NAME --to production`, `ftops rollback NAME`).",
        )


__all__ = ["DEFAULT_POLICY", "PRODUCTION", "STAGING", "GateReport", "gate", "verify_lineage"]
