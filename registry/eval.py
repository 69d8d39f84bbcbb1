"""``ftops eval RUN_ID``: evaluate a training run's adapter and its base on the held-out split and the regression suite.

The candidate (base + the run's LoRA adapter) and the base alone answer the same prompts with greedy decoding, batched
through vLLM's offline engine (the engine that serves) or transformers ``generate`` (``engine="transformers"``).
Metrics go on the run with the ``eval.`` prefix (``eval.accuracy``, ``eval.base.accuracy``, ``eval.retention`` ...,
see :data:`METRICS`), per-example results as the MLflow table ``eval/examples.json``, and the resolved config and all
metrics as ``eval/config.json`` / ``eval/metrics.json``. The settings that decide the numbers (:func:`eval_settings`:
engine, limits, schema, judge, the sha256 of the held-out split, the regression suite's content hash, the base and the
adapter) go to ``eval/settings.json``, and their sha256 to the run's tag ``ftops.eval.settings_sha256``, set last: the
gate reuses a run's metrics only when that tag equals the hash of the settings it would evaluate with.

Metrics, for the candidate and (``base.`` prefix) for the base:

- ``accuracy``: exact match with the reference (the last assistant message); JSON answers compare as parsed objects.
- ``field_accuracy``: JSON tasks (every reference is a JSON object): share of reference fields the answer got right.
- ``format_compliance``: JSON tasks: share of answers that are a JSON object valid against the schema (``schema``
  in the config, else one derived from the references: the keys every reference has are required).
- ``regression_score``: share of the general-skill regression suite (``ftops.expectations.regression``) answered right.
- ``answer_tokens``: mean generated tokens; ``latency_s``: seconds per answer at batch throughput; ``tokens_per_s``.
- ``judge_score``: optional LLM-as-judge, 0-10 on a rubric, through any OpenAI-compatible endpoint.

And relative to the base: ``improvement`` (accuracy - base accuracy), ``field_improvement``, and ``retention``
(regression score / base's regression score; 1.0 when the base scores 0).

This module is the evaluation of a run: reading its adapter and held-out split from MLflow, answering with both sides,
logging what was measured. The rest lives by concern: the options in :mod:`ftops.registry.eval_config`, the engines
in :mod:`ftops.registry.engines`, the scoring in :mod:`ftops.registry.scoring`, the LLM judge in
:mod:`ftops.registry.judge`.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ftops.adapter import ARTIFACT_PATH, TAG_EVAL_SETTINGS, check_base, download_adapter
from ftops.base import load_base
from ftops.errors import FtopsError
from ftops.expectations import regression as regression_suite
from ftops.manifest import sha256_file
from ftops.registry.engines import Engine, Generation, make_engine
from ftops.registry.eval_config import EvalConfig
from ftops.registry.judge import judge_scores
from ftops.registry.scoring import (
    exact_match,
    load_schema,
    mean,
    parse_json_object,
    regression_metrics,
    side_metrics,
)
from ftops.settings import mlflow_client

PREFIX = "eval."
TEST_SPLIT_ARTIFACT = "data/test.jsonl"
TABLE_ARTIFACT = "eval/examples.json"
METRICS_ARTIFACT = "eval/metrics.json"
SETTINGS_ARTIFACT = "eval/settings.json"
#: Bumped when :func:`eval_settings` or the scoring changes what the same settings would measure.
SETTINGS_VERSION = 1

_SIDE = (
    "accuracy",
    "field_accuracy",
    "format_compliance",
    "regression_score",
    "answer_tokens",
    "latency_s",
    "tokens_per_s",
    "judge_score",
)
#: Every metric name evaluation can produce (without the ``eval.`` prefix); policies may name only these.
METRICS = frozenset(
    [
        *_SIDE,
        *(f"base.{m}" for m in _SIDE),
        "improvement",
        "field_improvement",
        "retention",
        "judge_improvement",
        "examples",
        "regression_items",
    ]
)


@dataclass
class EvalResult:
    """What :func:`evaluate` logged."""

    run_id: str
    metrics: dict[str, float]
    """Metric names without the ``eval.`` prefix."""
    examples: list[dict] = field(default_factory=list)
    """Per-example rows (the MLflow table)."""
    settings: dict = field(default_factory=dict)
    """What decided the numbers (:func:`eval_settings`), logged as ``eval/settings.json``."""
    settings_sha256: str = ""
    """Their hash, tagged on the run as ``ftops.eval.settings_sha256``."""


def get_run(run_id: str):
    """The MLflow run, or a clear error for an unknown id."""
    from mlflow.exceptions import MlflowException  # heavy: mlflow loads when a run is read

    client = mlflow_client()
    if not re.fullmatch(r"[0-9a-fA-F]{32}|[A-Za-z0-9_-]{1,64}", run_id or ""):
        raise FtopsError(f"run id {run_id!r} is malformed; copy it from `ftops train` or the MLflow UI")
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise FtopsError(
            f"no MLflow run {run_id!r} at {client.tracking_uri}; check the id (`ftops train` prints it)"
        ) from e
    if run.info.lifecycle_stage == "deleted":
        raise FtopsError(f"run {run_id} is deleted; restore it in the MLflow UI or train again")
    return run


def fetch_adapter(run_id: str, dst: Path) -> tuple[Path, dict]:
    """Download and verify the run's ``adapter/`` artifact; a clear error when the run has none."""
    names = {Path(f.path).name for f in mlflow_client().list_artifacts(run_id, ARTIFACT_PATH)}
    if "manifest.json" not in names:
        raise FtopsError(
            f"run {run_id} has no adapter artifact ({ARTIFACT_PATH}/manifest.json); "
            "only runs made by `ftops train` can be evaluated or gated"
        )
    return download_adapter(f"runs:/{run_id}/{ARTIFACT_PATH}", dst)


def download_test_split(run_id: str, dst: Path) -> Path:
    """Download the run's held-out split ``data/test.jsonl`` into ``dst``; a clear error when the run has none."""
    import mlflow  # heavy: mlflow loads when a run is read

    try:
        return Path(
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=TEST_SPLIT_ARTIFACT, dst_path=str(dst))
        )
    except Exception as e:  # MlflowException / OSError for a missing artifact
        raise FtopsError(
            f"run {run_id} has no held-out split {TEST_SPLIT_ARTIFACT} ({e}); it is logged by `ftops train`"
        ) from e


def load_test_split(run_id: str, dst: Path, local: Path | None = None) -> list[dict]:
    """The run's held-out split ``data/test.jsonl`` (downloaded into ``dst`` unless ``local`` is that file already):
    chat rows whose last message is the assistant's reference."""
    local = local or download_test_split(run_id, dst)
    rows = read_chat_rows(local, f"{TEST_SPLIT_ARTIFACT} of run {run_id}")
    if not rows:
        raise FtopsError(f"{TEST_SPLIT_ARTIFACT} of run {run_id} is empty; nothing to evaluate")
    return rows


def read_chat_rows(path: Path, where: str) -> list[dict]:
    """The chat rows of a JSONL split whose last message is the assistant's reference (blank lines skipped); a
    malformed row is an error naming ``where`` and its line."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            messages = row["messages"]
            if messages[-1]["role"] != "assistant" or len(messages) < 2:
                raise ValueError("the last message must be the assistant's reference answer")
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise FtopsError(f"{where} line {n}: not a chat example ({e})") from e
        rows.append(row)
    return rows


def _sha256_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def eval_settings(config: EvalConfig, test_split: Path, base_sha256: str, adapter_digest: str) -> dict:
    """Everything that decides an evaluation's numbers, as JSON: the config fields that change them, the sha256 of
    the held-out split file, the regression suite's content hash (the items scored), the base's sha256 and the
    adapter's manifest digest. Not included: kv_cache_gib and batch_size (memory and speed only)."""
    schema = None
    if config.format_schema is not None:
        schema = {"spec": config.format_schema, "sha256": _sha256_json(load_schema(config.format_schema, []))}
    regression = None
    if config.regression:
        items = list(regression_suite.load_suite())[: config.regression_limit]
        regression = {"items": len(items), "sha256": _sha256_json(items)}
    judge = None
    if config.judge_base_url:
        judge = {"model": config.judge_model, "rubric_sha256": hashlib.sha256(config.judge_rubric.encode()).hexdigest()}
    return {
        "version": SETTINGS_VERSION,
        "engine": config.engine,
        "max_new_tokens": config.max_new_tokens,
        "max_examples": config.max_examples,
        "max_model_len": config.max_model_len,
        "format_schema": schema,
        "regression": regression,
        "regression_limit": config.regression_limit,
        "judge": judge,
        "test_split_sha256": sha256_file(test_split),
        "base_sha256": base_sha256,
        "adapter_digest": adapter_digest,
    }


def settings_sha256(settings: dict) -> str:
    """The hash tagged as ``ftops.eval.settings_sha256``: sha256 of the settings as canonical JSON."""
    return _sha256_json(settings)


def regression_answers(
    engine: Engine, adapter: Path | None, config: EvalConfig
) -> tuple[list[dict], list[Generation], list[bool]]:
    """The regression suite's items (the first ``config.regression_limit``), the answers of base + ``adapter`` (None:
    the base alone) and whether each passed its check."""
    items = list(regression_suite.load_suite())[: config.regression_limit]
    if not items:
        return [], [], []
    gens = engine.chat([item["messages"] for item in items], adapter, config.max_new_tokens)
    return items, gens, [bool(regression_suite.score(item, g.text)) for item, g in zip(items, gens)]


def _regression(engine: Engine, adapter: Path, config: EvalConfig) -> tuple[dict, list[dict]]:
    items, cand, cand_ok = regression_answers(engine, adapter, config)
    if not items:
        return {}, []
    _, base, base_ok = regression_answers(engine, None, config)
    rows = [
        {
            "split": "regression",
            "id": str(item["id"]),
            "prompt": item["messages"][-1]["content"],
            "reference": str(item.get("answer", "")),
            "candidate": c.text,
            "base": b.text,
            "candidate_correct": co,
            "base_correct": bo,
        }
        for item, c, b, co, bo in zip(items, cand, base, cand_ok, base_ok)
    ]
    return regression_metrics(cand_ok, base_ok) | {"regression_items": float(len(items))}, rows


def _run(
    engine: Engine, config: EvalConfig, adapter: Path, rows: list[dict], json_task: bool, schema: dict | None
) -> tuple[list[dict], dict[str, float]]:
    """Answer the held-out prompts (and the regression suite) with candidate and base; score them."""
    prompts = [r["messages"][:-1] for r in rows]
    refs = [str(r["messages"][-1]["content"]) for r in rows]
    cand = engine.chat(prompts, adapter, config.max_new_tokens)
    base_gens = engine.chat(prompts, None, config.max_new_tokens)
    metrics = {"examples": float(len(rows))}
    metrics |= side_metrics("", cand, refs, json_task, schema)
    metrics |= side_metrics("base.", base_gens, refs, json_task, schema)
    metrics["improvement"] = metrics["accuracy"] - metrics["base.accuracy"]
    if json_task:
        metrics["field_improvement"] = metrics["field_accuracy"] - metrics["base.field_accuracy"]
    examples = [
        {
            "split": "test",
            "id": str(i),
            "prompt": p[-1]["content"],
            "reference": ref,
            "candidate": c.text,
            "base": b.text,
            "candidate_correct": exact_match(c.text, ref, json_task),
            "base_correct": exact_match(b.text, ref, json_task),
        }
        for i, (p, ref, c, b) in enumerate(zip(prompts, refs, cand, base_gens))
    ]
    if config.judge_base_url:
        cj = judge_scores(config, prompts, refs, [g.text for g in cand])
        bj = judge_scores(config, prompts, refs, [g.text for g in base_gens])
        metrics |= {
            "judge_score": mean(cj),
            "base.judge_score": mean(bj),
            "judge_improvement": mean(cj) - mean(bj),
        }
        for row, c, b in zip(examples, cj, bj):
            row |= {"candidate_judge": c, "base_judge": b}
    if config.regression:
        reg_metrics, reg_rows = _regression(engine, adapter, config)
        metrics |= reg_metrics
        examples += reg_rows
    return examples, metrics


def evaluate(run_id: str, config: EvalConfig | None = None, engine: Engine | None = None) -> EvalResult:
    """Evaluate run ``run_id``'s adapter and its base; log metrics, the per-example table and the config on the run.

    ``engine`` reuses a running engine (it must serve the run's base); by default one is started per call."""
    import mlflow  # heavy: mlflow loads when a run is evaluated
    from mlflow.entities import Metric

    config = config or EvalConfig()
    get_run(run_id)
    client = mlflow_client()
    with tempfile.TemporaryDirectory(prefix="ftops-eval-") as tmp:
        adapter, manifest = fetch_adapter(run_id, Path(tmp) / "adapter")
        base = load_base(manifest["base"]["name"])
        check_base(f"run {run_id}'s adapter", manifest["base"], base)
        test_split = download_test_split(run_id, Path(tmp) / "data")
        rows = load_test_split(run_id, Path(tmp) / "data", test_split)[: config.max_examples]
        settings = eval_settings(config, test_split, base.sha256, manifest["digest"])
        ref_objects = [parse_json_object(str(r["messages"][-1]["content"])) for r in rows]
        json_task = all(o is not None for o in ref_objects)
        schema = load_schema(config.format_schema, ref_objects) if json_task else None

        own_engine = engine is None
        engine = engine or make_engine(config, base.path, int(manifest.get("lora", {}).get("r") or 8))
        try:
            examples, metrics = _run(engine, config, adapter, rows, json_task, schema)
        finally:
            if own_engine and hasattr(engine, "close"):
                engine.close()  # one vLLM engine at a time on this machine: serving may start the next one

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(PREFIX + k, float(v), now, 0) for k, v in sorted(metrics.items())])
    columns = sorted({k for row in examples for k in row})
    mlflow.log_table({c: [row.get(c) for row in examples] for c in columns}, TABLE_ARTIFACT, run_id=run_id)
    client.log_dict(run_id, config.model_dump(mode="json", exclude={"judge_rubric"}), "eval/config.json")
    client.log_dict(run_id, metrics, METRICS_ARTIFACT)
    sha = settings_sha256(settings)
    client.log_dict(run_id, {"sha256": sha, "settings": settings}, SETTINGS_ARTIFACT)
    client.set_tag(run_id, "ftops.eval.engine", config.engine)
    client.set_tag(run_id, TAG_EVAL_SETTINGS, sha)  # last: a tag on the run vouches for everything logged before it
    return EvalResult(run_id, metrics, examples, settings, sha)


def logged_metrics(run_id: str) -> dict[str, float]:
    """The ``eval.*`` metrics already on the run (names without the prefix); empty if it was never evaluated."""
    run = get_run(run_id)
    return {k[len(PREFIX) :]: v for k, v in run.data.metrics.items() if k.startswith(PREFIX)}
