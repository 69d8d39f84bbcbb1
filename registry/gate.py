"""``ftops gate RUN_ID``: judge a run against a policy; register what passes as a model version at alias ``staging``.

Order of work, so that bad input costs nothing: the run must exist, the policy must load and name only metrics
evaluation produces, the run must carry an adapter, its held-out split must share no example with its training split
or its replay data (exact or normalised-text duplicates of prompt + answer), and the registry must answer which
version is in production (a registry that cannot be read stops the gate; only a missing model or alias means "none").
Then the run's logged ``eval.*`` metrics are reused only when its tag ``ftops.eval.settings_sha256`` equals the hash
of the settings this gate would evaluate with (:func:`ftops.registry.eval.eval_settings`); otherwise (never evaluated,
other settings, metrics logged by hand) it is evaluated again. Every rule is judged (against the current production
version for relative rules), and the report is logged on the run (``gate/report.md``, ``gate/report.json``, tag
``ftops.gate.verdict``). On pass only, the adapter is checked against its base (base name and sha256, LoRA rank,
target modules that exist in the base, safetensors whose sha256 match the manifest) and a model version is created
with the lineage tags, the eval settings hash and the report as its description, then ``staging`` moves to it. On
fail nothing is registered and no alias moves.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from ftops import adapter as fa
from ftops.base import load_base
from ftops.errors import FtopsError
from ftops.expectations.validate import fold_text
from ftops.manifest import safetensors_shapes
from ftops.names import check_name
from ftops.registry import eval as ev
from ftops.registry.engines import Engine
from ftops.registry.eval_config import EvalConfig
from ftops.registry.lock import registry_lock
from ftops.registry.policy import DEFAULT_POLICY, Policy, RuleResult, check_policy, load_policy
from ftops.settings import mlflow_client

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
#: The run's splits the held-out split must not overlap: what was trained on (``training/job.py`` logs them).
TRAINED_SPLITS = ("data/train.jsonl", "data/replay.jsonl")


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
    eval_settings_sha256: str | None = None
    """The hash of the evaluation settings the metrics came from (``eval/settings.json`` on the run)."""
    eval_reused: bool = False
    """Whether the run's logged evaluation was reused (same settings hash) rather than run again."""

    def as_dict(self) -> dict:
        return {**asdict(self), "rules": [r.as_dict() for r in self.rules]}

    def markdown(self) -> str:
        lines = [
            f"## Gate {self.verdict.upper()}: run `{self.run_id}`, policy `{self.policy}`",
            "",
            f"Compared with production version: {self.production_version or 'none'}.",
            "",
            f"Evaluation settings sha256 `{self.eval_settings_sha256 or 'unknown'}` (`eval/settings.json` on the run)"
            + (", evaluation reused." if self.eval_reused else ", evaluated for this gate."),
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


def metric_tags(tags: dict[str, str]) -> dict[str, float]:
    """The metrics a version was judged on, from its ``ftops.metric.<name>`` tags (names without the prefix)."""
    return {k[len(fa.TAG_METRIC_PREFIX) :]: float(v) for k, v in tags.items() if k.startswith(fa.TAG_METRIC_PREFIX)}


def registry_error(name: str, what: str, error: Exception) -> FtopsError:
    """The one-line error for a registry read that failed for another reason than "it does not exist"."""
    detail = " ".join(str(error).split())
    if len(detail) > 300:
        detail = detail[:300] + "..."
    return FtopsError(
        f"registered model {name}: cannot read {what} from the MLflow registry ({type(error).__name__}: {detail}); "
        "nothing was changed: check that the registry (MLFLOW_REGISTRY_URI / MLFLOW_TRACKING_URI) answers and retry"
    )


def production_metrics(client, name: str) -> tuple[str | None, dict[str, float]]:
    """The version at ``name@production`` and the metrics it was judged on (from its ``ftops.metric.*`` tags);
    ``(None, {})`` when there is none. A registry read error raises :class:`FtopsError`
    (see :func:`ftops.adapter.alias_version`)."""
    version = fa.alias_version(name, PRODUCTION, client)
    if version is None:
        return None, {}
    try:
        mv = client.get_model_version(name, version)
    except Exception as e:  # the alias points at it: any error here is the registry failing, not "none"
        raise registry_error(name, f"version {version} (at @{PRODUCTION})", e) from e
    return version, metric_tags(mv.tags)


# ------------------------------------------------------------------------------------------- held-out overlap


def _example_key(row: dict) -> tuple[str, str] | None:
    """``(user prompt, answer)`` of a chat row: its user messages and its last assistant message."""
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list):
        return None
    user = [str(m.get("content", "")) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    answers = [str(m.get("content", "")) for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    if not user or not answers:
        return None
    return "\n".join(user), answers[-1]


def _read_examples(path: Path) -> list[tuple[int, tuple[str, str]]]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            key = _example_key(json.loads(line))
        except ValueError:
            key = None
        if key is not None:
            out.append((n, key))
    return out


def check_held_out(run_id: str, dst: Path) -> Path:
    """Refuse a run whose held-out split shares an example (user prompt + answer, exactly or after folding case,
    whitespace and punctuation) with its training split or its replay data, as the run logged them.

    Returns the downloaded held-out split. Raises :class:`FtopsError` listing the first duplicates; or when the run
    logged no training split, since then nothing shows that the held-out split was held out."""
    import mlflow  # heavy: mlflow loads when a run is read

    local = {}
    logged = {f.path for f in mlflow_client().list_artifacts(run_id, "data")}
    for artifact in (ev.TEST_SPLIT_ARTIFACT, *TRAINED_SPLITS):
        if artifact in logged:
            local[artifact] = Path(
                mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(dst))
            )
    if ev.TEST_SPLIT_ARTIFACT not in local:
        raise FtopsError(f"run {run_id} has no held-out split {ev.TEST_SPLIT_ARTIFACT}; it is logged by `ftops train`")
    if TRAINED_SPLITS[0] not in local:
        raise FtopsError(
            f"run {run_id} has no training split {TRAINED_SPLITS[0]}: nothing shows that its held-out split was held "
            "out; gate runs made by `ftops train`"
        )
    exact: dict[tuple[str, str], str] = {}
    folded: dict[tuple[str, str], str] = {}
    for artifact in TRAINED_SPLITS:
        if artifact in local:
            for n, (prompt, answer) in _read_examples(local[artifact]):
                where = f"{Path(artifact).stem} line {n}"
                exact.setdefault((prompt, answer), where)
                folded.setdefault((fold_text(prompt), fold_text(answer)), where)
    clashes = []
    test = _read_examples(local[ev.TEST_SPLIT_ARTIFACT])
    for n, (prompt, answer) in test:
        if (prompt, answer) in exact:
            clashes.append(f"test line {n} = {exact[(prompt, answer)]}")
        elif (key := (fold_text(prompt), fold_text(answer))) in folded:
            clashes.append(f"test line {n} ~ {folded[key]} (same text up to case, whitespace, punctuation)")
    if clashes:
        shown = "; ".join(clashes[:5]) + (f"; and {len(clashes) - 5} more" if len(clashes) > 5 else "")
        raise FtopsError(
            f"run {run_id}: {len(clashes)} of {len(test)} held-out examples also appear in its training or replay "
            f"data ({shown}); the held-out split must be disjoint from what was trained on: remove them and train "
            "again"
        )
    return local[ev.TEST_SPLIT_ARTIFACT]


# ------------------------------------------------------------------------------------------- eval provenance


def reusable_metrics(run, settings_sha256: str) -> dict[str, float] | None:
    """The run's logged evaluation, if it was made with exactly these settings: the run's tag
    ``ftops.eval.settings_sha256`` equals ``settings_sha256`` and the run's ``eval.*`` metrics still hold the values
    that evaluation logged (``eval/metrics.json``). None otherwise: never evaluated, other settings, or metrics logged
    by hand afterwards."""
    run_id = run.info.run_id
    if run.data.tags.get(fa.TAG_EVAL_SETTINGS) != settings_sha256:
        return None
    with tempfile.TemporaryDirectory(prefix="ftops-gate-metrics-") as tmp:
        try:
            logged = json.loads(Path(mlflow_client().download_artifacts(run_id, ev.METRICS_ARTIFACT, tmp)).read_text())
        except Exception:  # no such artifact, or not JSON: nothing to vouch for the metrics
            return None
    on_run = {k[len(ev.PREFIX) :]: v for k, v in run.data.metrics.items() if k.startswith(ev.PREFIX)}
    if not isinstance(logged, dict) or any(on_run.get(k) != v for k, v in logged.items()):
        return None
    return {k: float(v) for k, v in logged.items()}


def verify_lineage(run, adapter_dir: Path, manifest: dict) -> dict[str, str]:
    """Check the adapter against its base and the run's tags; return the version's lineage tags.

    Raises :class:`FtopsError` naming the first mismatch."""
    run_id = run.info.run_id
    tags = run.data.tags
    base_rec = manifest["base"]
    base = load_base(base_rec["name"])
    fa.check_base(f"run {run_id}'s adapter", base_rec, base)
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
    base_keys = [k for f in sorted(Path(base.path).glob("*.safetensors")) for k in safetensors_shapes(f)]
    missing = [t for t in targets if not any(k.endswith(f".{t}.weight") for k in base_keys)]
    if missing:
        raise FtopsError(f"run {run_id}: LoRA target modules {missing} do not exist in base {base.name}")
    shapes = safetensors_shapes(adapter_dir / "adapter_model.safetensors")
    a_shapes = [v for k, v in shapes.items() if "lora_A" in k]
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


def default_model_name(run) -> str:
    """``ftops.model_name`` from the run's tags, else ``<base>-lora``."""
    tags = run.data.tags
    return tags.get("ftops.model_name") or f"{tags.get(fa.TAG_BASE_NAME, 'ftops')}-lora"


def gate(
    run_id: str,
    policy_path: str | Path | None = None,
    name: str | None = None,
    eval_config: EvalConfig | None = None,
    engine: Engine | None = None,
    reevaluate: bool = False,
) -> GateReport:
    """Judge run ``run_id`` against the policy; on pass register a version at ``staging``. Returns the report
    (``verdict`` says which); raises :class:`FtopsError` for bad input, with nothing registered."""
    run = ev.get_run(run_id)
    policy: Policy = load_policy(policy_path, ev.METRICS)
    name = check_name(name or default_model_name(run), "registered model name")
    config = eval_config or EvalConfig()
    client = mlflow_client()
    with tempfile.TemporaryDirectory(prefix="ftops-gate-") as tmp:
        adapter_dir, manifest = ev.fetch_adapter(run_id, Path(tmp) / "adapter")
        test_split = check_held_out(run_id, Path(tmp) / "data")
        prod_version, prod_metrics = production_metrics(client, name)
        settings = ev.eval_settings(config, test_split, manifest["base"]["sha256"], manifest["digest"])
        settings_sha256 = ev.settings_sha256(settings)
        metrics = None if reevaluate else reusable_metrics(run, settings_sha256)
        reused = metrics is not None
        if metrics is None:
            result = ev.evaluate(run_id, config, engine)
            metrics, settings_sha256 = result.metrics, result.settings_sha256
        results = check_policy(policy, metrics, prod_metrics if prod_version else None)
        verdict: Literal["pass", "fail"] = "pass" if all(r.passed for r in results) else "fail"
        report = GateReport(run_id, name, policy.name, verdict, results, metrics, prod_version)
        report.eval_settings_sha256, report.eval_reused = settings_sha256, reused
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
        fa.TAG_EVAL_SETTINGS: settings_sha256,
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
    from mlflow.exceptions import MlflowException  # heavy: mlflow loads when the registry is written

    try:
        client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise registry_error(name, "the registered model", e) from e
        client.create_registered_model(
            name,
            description="LoRA adapter registered by `ftops gate`; aliases `staging` and `production` carry the "
            "lifecycle (`ftops promote NAME --to production`, `ftops rollback NAME`).",
        )


__all__ = ["DEFAULT_POLICY", "PRODUCTION", "STAGING", "GateReport", "check_held_out", "gate", "verify_lineage"]
