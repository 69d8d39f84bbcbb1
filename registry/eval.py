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
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from pydantic import Field

from ftops.adapter import check_base
from ftops.config import StrictConfig
from ftops.errors import FtopsError
from ftops.manifest import sha256_file
from ftops.settings import mlflow_client
from ftops.vllm_settings import KV_CACHE_GIB, MAX_MODEL_LEN

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

DEFAULT_RUBRIC = (
    "You grade an assistant's answer against a reference answer. Score 0-10: 10 means it says the same as the "
    "reference (wording may differ), 5 means partly right, 0 means wrong, empty or off-topic. "
    "Reply with the integer score only."
)


class EvalConfig(StrictConfig):
    """How to evaluate one run. ``ftops eval`` and ``ftops gate`` build their options from these fields."""

    engine: Literal["vllm", "transformers"] = "vllm"
    """vllm: batched through vLLM's offline engine (in serving's dtype), the one that serves; transformers: generate
    (fp32), the fallback."""
    max_new_tokens: int = Field(128, ge=1)
    """Greedy decoding stops at EOS or after this many tokens per answer."""
    max_examples: int | None = Field(None, ge=1)
    """Evaluate only the first N held-out examples (none: all)."""
    regression: bool = True
    """Also score candidate and base on the general-skill regression suite (ftops.expectations.regression), giving
    retention."""
    regression_limit: int | None = Field(None, ge=1)
    """Score only the first N regression items (none: all)."""
    format_schema: str | None = None
    """JSON schema for format compliance: a .json file, or 'ticket' for the demo task's
    ``ftops.expectations.demo_data.TICKET_SCHEMA`` (none: derived from the reference answers)."""
    max_model_len: int = Field(MAX_MODEL_LEN, ge=16)
    """vLLM context length (small on CPU: it sizes the KV cache)."""
    kv_cache_gib: int = Field(KV_CACHE_GIB, ge=1)
    """vLLM on CPU: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE, unless set); ignored on a GPU host."""
    batch_size: int = Field(16, ge=1)
    """transformers engine: prompts per generate call."""
    judge_base_url: str | None = None
    """LLM-as-judge: an OpenAI-compatible base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:3000/v1
    (ftops serve); off when none."""
    judge_model: str = "gpt-4o-mini"
    """The judge's model name at that endpoint."""
    judge_api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the judge's API key (``none`` is sent if unset, as local servers accept)."""
    judge_rubric: str = DEFAULT_RUBRIC
    """The judge's system prompt; it must ask for one integer 0-10."""


@dataclass
class Generation:
    """One answer."""

    text: str
    tokens: int
    latency_s: float
    """Wall time of the batch divided by its size: seconds per answer at the batch's throughput."""


class Engine(Protocol):
    """What evaluation needs from an inference engine: greedy chat answers, with or without a LoRA adapter."""

    def chat(self, conversations: list[list[dict]], adapter: Path | None, max_new_tokens: int) -> list[Generation]: ...


class VllmEngine:
    """vLLM's offline engine on a base model with LoRA enabled; one per process (start-up is ~30 s on CPU)."""

    def __init__(
        self,
        base_path: str,
        max_lora_rank: int = 64,
        max_model_len: int = 2048,
        kv_cache_gib: int = 1,
        dtype: str | None = None,
    ):
        import os

        from ftops.vllm_settings import engine_dtype, vllm_cpu_env

        os.environ.update(vllm_cpu_env(kv_cache_gib))  # read by vLLM's CPU worker only
        from vllm import LLM

        self.base_path = base_path
        self.llm = LLM(
            model=base_path,
            enable_lora=True,
            max_lora_rank=max_lora_rank,
            max_loras=2,
            max_model_len=max_model_len,
            dtype=dtype or engine_dtype(),  # serving's default too: the gate judges what is served
            seed=0,
        )
        self._lora_ids: dict[str, int] = {}

    def chat(self, conversations: list[list[dict]], adapter: Path | None, max_new_tokens: int) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        lora = None
        if adapter is not None:
            key = str(adapter)
            lora_id = self._lora_ids.setdefault(key, len(self._lora_ids) + 1)
            lora = LoRARequest(f"candidate-{lora_id}", lora_id, key)
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        start = time.perf_counter()
        outputs = self.llm.chat(conversations, params, lora_request=lora, use_tqdm=False)
        per = (time.perf_counter() - start) / max(len(conversations), 1)
        return [Generation(o.outputs[0].text, len(o.outputs[0].token_ids), per) for o in outputs]

    def close(self) -> None:
        """Stop the engine's worker processes now (rather than whenever garbage collection gets to them)."""
        import gc

        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None:
                core.shutdown()
            del llm
            gc.collect()


class TransformersEngine:
    """transformers ``generate`` on the base (fp32, CPU), with a PEFT adapter attached for the candidate."""

    def __init__(self, base_path: str, batch_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(base_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        self.model.eval()
        self.batch_size = batch_size

    def chat(self, conversations: list[list[dict]], adapter: Path | None, max_new_tokens: int) -> list[Generation]:
        from peft import PeftModel

        if adapter is None:
            return self._generate(self.model, conversations, max_new_tokens)
        model = PeftModel.from_pretrained(self.model, str(adapter))
        try:
            return self._generate(model, conversations, max_new_tokens)
        finally:
            self.model = model.unload()  # remove the LoRA layers: the base is the base again

    def _generate(self, model, conversations: list[list[dict]], max_new_tokens: int) -> list[Generation]:
        import torch

        out: list[Generation] = []
        for i in range(0, len(conversations), self.batch_size):
            batch = conversations[i : i + self.batch_size]
            texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in batch]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            start = time.perf_counter()
            with torch.no_grad():
                ids = model.generate(
                    **enc,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            per = (time.perf_counter() - start) / len(batch)
            for row in ids[:, enc["input_ids"].shape[1] :]:
                tokens = [t for t in row.tolist() if t != self.tokenizer.pad_token_id]
                out.append(Generation(self.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), per))
        return out


def make_engine(config: EvalConfig, base_path: str, max_lora_rank: int) -> Engine:
    """The engine ``config.engine`` names, for one base model."""
    if config.engine == "vllm":
        rank = next(r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= max_lora_rank)  # vLLM accepts these
        return VllmEngine(base_path, rank, config.max_model_len, config.kv_cache_gib)
    return TransformersEngine(base_path, config.batch_size)


# ----------------------------------------------------------------------------------------------------------- scoring


def parse_json_object(text: str) -> dict | None:
    """The answer as a JSON object, tolerating a surrounding Markdown code fence; None if it is not one."""
    s = text.strip()
    fence = re.match(r"^```(?:json)?\s*(.*?)\s*```$", s, re.DOTALL)
    if fence:
        s = fence.group(1)
    try:
        value = json.loads(s)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _normalize(text: str) -> str:
    return " ".join(text.split())


def exact_match(prediction: str, reference: str, json_task: bool) -> bool:
    if json_task:
        pred = parse_json_object(prediction)
        return pred is not None and pred == parse_json_object(reference)
    return _normalize(prediction) == _normalize(reference)


def field_accuracy(prediction: str, reference: str) -> float:
    """Share of the reference object's fields that the predicted object has with an equal value."""
    ref = parse_json_object(reference) or {}
    pred = parse_json_object(prediction)
    if not ref:
        return 1.0 if pred == ref else 0.0
    if pred is None:
        return 0.0
    return sum(1 for k, v in ref.items() if k in pred and pred[k] == v) / len(ref)


def derive_schema(references: list[dict]) -> dict:
    """A JSON schema from the reference objects: an object requiring the keys every reference has."""
    required = set(references[0]) if references else set()
    for ref in references[1:]:
        required &= set(ref)
    return {"type": "object", "required": sorted(required)}


def load_schema(spec: str | None, references: list[dict]) -> dict:
    if spec is None:
        return derive_schema(references)
    if spec == "ticket":
        from ftops.expectations.demo_data import TICKET_SCHEMA

        return TICKET_SCHEMA
    path = Path(spec)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FtopsError(f"{spec}: cannot read the JSON schema ({e}); give a .json schema file or 'ticket'") from e


def format_ok(prediction: str, schema: dict) -> bool:
    import jsonschema

    pred = parse_json_object(prediction)
    if pred is None:
        return False
    return jsonschema.Draft202012Validator(schema).is_valid(pred)


def judge_scores(
    config: EvalConfig, prompts: list[list[dict]], references: list[str], answers: list[str]
) -> list[float]:
    """Score each answer 0-10 with an LLM judge at ``config.judge_base_url`` through the ``openai`` client."""
    import os

    import openai

    client = openai.OpenAI(
        base_url=config.judge_base_url,
        api_key=os.environ.get(config.judge_api_key_env) or "none",
        max_retries=2,
        timeout=60,
    )
    scores = []
    for prompt, ref, answer in zip(prompts, references, answers):
        question = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
        user = f"Question:\n{question}\n\nReference answer:\n{ref}\n\nAssistant's answer:\n{answer}\n\nScore (0-10):"
        try:
            reply = client.chat.completions.create(
                model=config.judge_model,
                temperature=0,
                max_tokens=8,
                messages=[
                    {"role": "system", "content": config.judge_rubric},
                    {"role": "user", "content": user},
                ],
            )
        except openai.OpenAIError as e:
            raise FtopsError(f"LLM judge at {config.judge_base_url}: {type(e).__name__}: {e}") from e
        match = re.search(r"\d+(?:\.\d+)?", reply.choices[0].message.content or "")
        scores.append(min(max(float(match.group()), 0.0), 10.0) if match else 0.0)
    return scores


# --------------------------------------------------------------------------------------------------------- the job


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
    from mlflow.exceptions import MlflowException

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
    from ftops.adapter import ARTIFACT_PATH, download_adapter

    names = {Path(f.path).name for f in mlflow_client().list_artifacts(run_id, ARTIFACT_PATH)}
    if "manifest.json" not in names:
        raise FtopsError(
            f"run {run_id} has no adapter artifact ({ARTIFACT_PATH}/manifest.json); "
            "only runs made by `ftops train` can be evaluated or gated"
        )
    return download_adapter(f"runs:/{run_id}/{ARTIFACT_PATH}", dst)


def download_test_split(run_id: str, dst: Path) -> Path:
    """Download the run's held-out split ``data/test.jsonl`` into ``dst``; a clear error when the run has none."""
    import mlflow

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
        from ftops.expectations import regression as suite

        items = list(suite.load_suite())[: config.regression_limit]
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


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def side_metrics(prefix: str, gens: list[Generation], refs: list[str], json_task: bool, schema: dict | None) -> dict:
    """The task metrics of one side's answers ``gens`` against the references ``refs``, names prefixed with ``prefix``
    (``""`` for the candidate, ``"base."`` for the base): what the gate judges. ``ftops advise`` scores its options
    with it too."""
    m = {
        f"{prefix}accuracy": _mean([float(exact_match(g.text, r, json_task)) for g, r in zip(gens, refs)]),
        f"{prefix}answer_tokens": _mean([g.tokens for g in gens]),
        f"{prefix}latency_s": _mean([g.latency_s for g in gens]),
        f"{prefix}tokens_per_s": sum(g.tokens for g in gens) / max(sum(g.latency_s for g in gens), 1e-9),
    }
    if json_task:
        m[f"{prefix}field_accuracy"] = _mean([field_accuracy(g.text, r) for g, r in zip(gens, refs)])
        m[f"{prefix}format_compliance"] = _mean([float(format_ok(g.text, schema)) for g in gens])
    return m


def regression_answers(
    engine: Engine, adapter: Path | None, config: EvalConfig
) -> tuple[list[dict], list[Generation], list[bool]]:
    """The regression suite's items (the first ``config.regression_limit``), the answers of base + ``adapter`` (None:
    the base alone) and whether each passed its check."""
    from ftops.expectations import regression

    items = list(regression.load_suite())[: config.regression_limit]
    if not items:
        return [], [], []
    gens = engine.chat([item["messages"] for item in items], adapter, config.max_new_tokens)
    return items, gens, [bool(regression.score(item, g.text)) for item, g in zip(items, gens)]


def _regression(engine: Engine, adapter: Path, config: EvalConfig) -> tuple[dict, list[dict]]:
    items, cand, cand_ok = regression_answers(engine, adapter, config)
    if not items:
        return {}, []
    _, base, base_ok = regression_answers(engine, None, config)
    score, base_score = _mean([float(x) for x in cand_ok]), _mean([float(x) for x in base_ok])
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
    retention = score / base_score if base_score > 0 else 1.0  # the base knew nothing: nothing to lose
    return {
        "regression_score": score,
        "base.regression_score": base_score,
        "retention": retention,
        "regression_items": float(len(items)),
    }, rows


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
            "judge_score": _mean(cj),
            "base.judge_score": _mean(bj),
            "judge_improvement": _mean(cj) - _mean(bj),
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
    import mlflow
    from mlflow.entities import Metric

    from ftops.adapter import TAG_EVAL_SETTINGS
    from ftops.base import load_base

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
