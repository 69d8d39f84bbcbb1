"""``ftops advise DATA_DIR_OR_RUN``: should you fine-tune? Prompt, few-shot, retrieval, adapters and a hosted model
side by side on the user's own held-out examples, in quality and dollars.

The guides' decision order is prompt first, then retrieval, and fine-tune only for what they cannot reach (format,
domain terms) or for a lower cost per query at volume. Every option answers the same held-out examples and is scored
with the gate's own functions (:func:`ftops.registry.scoring.side_metrics`, ``ftops.registry.eval.regression_answers``)
on the gate's engines (:func:`ftops.registry.engines.make_engine`, greedy decoding):

- ``zero-shot``: the base with the data's system prompt (the held-out row's own, else the training split's most
  common one);
- ``few-shot``: the base with ``k`` training examples (a fixed, seeded sample) as earlier chat turns;
- ``retrieval``: the base with the ``k`` training examples most similar to each query (BM25 over the user turns,
  ``rank_bm25``), the most similar last;
- each adapter (the run's own when the input is a run, and every ``--adapter NAME[@ALIAS|:VERSION]``);
- each ``--hosted-model`` at ``--hosted-url`` through the ``openai`` client, with the zero-shot prompt; an endpoint
  that does not answer is a note in the report, and the rest still runs.

Costs follow the cost model of ``docs/cost.md``: the self-hosted cost of an option is the replica's hourly price
(``costs/hardware.yaml``) times the engine's busy time (the union of its batches' intervals,
:func:`ftops.costs.usage.busy_seconds`), per 1,000 queries; the hosted cost is the price table's
(``costs/prices.yaml``) per-token prices times the option's own prompt and completion tokens. Local options are
also priced as if their tokens went to a hosted API (``price_base`` for prompt options, ``price_fine_tuned`` for
adapters), which is the OpenAI-side decision. Break-even: an adapter's training cost (the run's cost entry,
:func:`ftops.costs.runs.training_cost`) over its saving per query against each other option.

Where it lives: serving is the last stage, and advise needs two earlier ones: registry's evaluation (held-out
split, scoring, engines) and serving's own cost model and registry resolution. A stage imports only the stages before
it, so it belongs here (not in registry, which may not import serving); it never imports training.
"""

from __future__ import annotations

import json
import random
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

from pydantic import Field

from ftops.adapter import check_base
from ftops.advise.report import TIERS, availability_warnings, break_even, markdown, plot, recommend
from ftops.config import StrictConfig
from ftops.errors import FtopsError, UsageError
from ftops.names import parse_model_ref


class AdviseConfig(StrictConfig):
    """What ``ftops advise`` compares and how. ``ftops advise`` builds its options from these fields."""

    source: str
    """A data folder with train.jsonl and test.jsonl (`ftops data split`), or an MLflow run id of `ftops train`
    (its splits, its adapter and its training cost)."""
    adapters: list[str] = Field(default_factory=list)
    """Registered adapter NAME, NAME@ALIAS or NAME:VERSION to compare (repeatable; NAME alone means @production)."""
    hosted_url: str | None = None
    """An OpenAI-compatible base URL (https://api.openai.com/v1, or an ftops serve's http://HOST:PORT/v1)."""
    hosted_models: list[str] = Field(default_factory=list)
    """Model at --hosted-url, as MODEL or MODEL=PRICE_KEY (a costs/prices.yaml key to price it with; default: the
    row whose model or key is MODEL). Repeatable."""
    hosted_api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the hosted endpoint's API key (``none`` is sent if unset)."""
    base: str | None = None
    """Imported base model for a data folder without adapters (default: smollm2-135m-instruct; else the adapters')."""
    k: int = Field(4, ge=1)
    """Training examples in the prompt for few-shot and retrieval."""
    queries_per_day: float = Field(1000.0, gt=0)
    """Traffic for the break-even in months."""
    out: Path | None = None
    """Folder for report.md, advice.json and advice.png (default: $FTOPS_HOME/advise/<UTC time>)."""
    engine: Literal["vllm", "transformers"] = "vllm"
    """The gate's engines: vllm (batched, the one that serves) or transformers (generate, fp32)."""
    max_examples: int | None = Field(None, ge=1)
    """Use only the first N held-out examples (none: all)."""
    max_new_tokens: int = Field(128, ge=1)
    """Greedy decoding stops at EOS or after this many tokens per answer (the gate's default)."""
    batch_size: int = Field(8, ge=1)
    """Queries answered at once: the engine's batch, and concurrent requests to the hosted endpoint."""
    regression: bool = True
    """Also score the base and each adapter on the general-skill regression suite (prompt options share the base's
    weights, so its score)."""
    regression_limit: int | None = Field(None, ge=1)
    """Score only the first N regression items (none: all 40)."""
    format_schema: str | None = None
    """JSON schema for format compliance: a .json file or 'ticket' (none: derived from the references)."""
    max_model_len: int = Field(2048, ge=64)
    """vLLM context length: every prompt plus max_new_tokens must fit."""
    kv_cache_gib: int = Field(1, ge=1)
    """vLLM on CPU: KV cache size in GiB."""
    replica: str | None = None
    """costs/hardware.yaml instance the self-hosted options run on (default: the table's default)."""
    price_base: str = "openai/gpt-4o-mini"
    """Price row for the hosted equivalent of the prompt options' tokens."""
    price_fine_tuned: str = "openai/ft:gpt-4o-mini"
    """Price row for the hosted equivalent of the adapters' tokens (and its training price for a hosted fine-tune)."""
    tolerance: float = Field(0.05, ge=0)
    """An option is good enough when its quality is within this of the best option's."""
    payback_months: float = Field(6.0, gt=0)
    """Fine-tune for cost only when the adapter repays its training within this many months at --queries-per-day."""
    warn_days: int = Field(90, ge=0)
    """Warn when a price row's end date (new fine-tuning jobs, availability) is past or within this many days."""


# --------------------------------------------------------------------------------------------- inputs
@dataclass
class Data:
    label: str
    train: list[dict]
    test: list[dict]
    run_id: str | None = None
    train_path: str = ""


@dataclass
class AdapterChoice:
    label: str
    path: Path
    rank: int
    base_name: str
    base_sha256: str
    run_id: str | None
    name: str | None = None
    version: str | None = None


@dataclass
class Answers:
    gens: list
    prompt_tokens: list[int]
    latencies: list[float]
    busy_s: float


@dataclass
class Option:
    id: str
    name: str
    kind: str
    conversations: list[list[dict]]
    adapter: AdapterChoice | None = None
    hosted_model: str | None = None
    price_key: str | None = None
    answers: Answers | None = None
    metrics: dict = field(default_factory=dict)


def _read_chat_rows(path: Path, what: str) -> list[dict]:
    """Chat rows of a split file; one clear line for a missing, empty or malformed one."""
    from ftops.registry.eval import read_chat_rows

    if not path.is_file():
        raise FtopsError(
            f"{path}: no {what} split; a data folder holds train.jsonl and test.jsonl (`ftops data split`)"
        )
    rows = read_chat_rows(path, str(path))
    if not rows:
        raise FtopsError(f"the {what} split {path} is empty: advise needs held-out and training examples")
    return rows


def load_data(source: str, tmp: Path) -> Data:
    """The training and held-out splits of a data folder or of a training run (its logged ``data/`` artifacts)."""
    folder = Path(source)
    if folder.is_dir():
        return Data(
            str(folder),
            _read_chat_rows(folder / "train.jsonl", "training"),
            _read_chat_rows(folder / "test.jsonl", "held-out"),
            train_path=str(folder / "train.jsonl"),
        )
    if folder.suffix or "/" in source:
        raise FtopsError(f"{source}: no such data folder (give a folder from `ftops data split` or a run id)")
    import mlflow

    from ftops.registry import eval as ev

    ev.get_run(source)  # a clear line for an unknown or malformed id
    test = ev.download_test_split(source, tmp / "data")
    try:
        train = Path(
            mlflow.artifacts.download_artifacts(run_id=source, artifact_path="data/train.jsonl", dst_path=str(tmp))
        )
    except Exception as e:  # MlflowException / OSError for a missing artifact
        raise FtopsError(
            f"run {source} has no training split data/train.jsonl ({e}); it is logged by `ftops train`"
        ) from e
    return Data(
        f"run {source}",
        _read_chat_rows(train, "training"),
        _read_chat_rows(test, "held-out"),
        source,
        f"run {source} data/train.jsonl",
    )


def resolve_adapter(spec: str, tmp: Path) -> AdapterChoice:
    """``NAME``, ``NAME@ALIAS`` or ``NAME:VERSION`` from the registry: a gated, unrevoked version, downloaded into
    ``tmp`` and checked against its manifest and the digest the gate tagged."""
    from ftops.adapter import TAG_ADAPTER_DIGEST, TAG_BASE_NAME, alias_version, download_adapter
    from ftops.base import load_base
    from ftops.serving.adapters import UnknownVersion, refusal, version_tags
    from ftops.settings import mlflow_client

    ref = parse_model_ref(spec)
    if ref is None:
        raise UsageError(f"--adapter {spec!r}: expected NAME, NAME@ALIAS or NAME:VERSION")
    name, alias, version = ref
    mlflow_client()  # the configured store
    if version is None:
        alias = alias or "production"
        version = alias_version(name, alias)
        if version is None:
            raise FtopsError(
                f"unknown adapter {spec}: the registry has no model {name} with alias @{alias}; "
                "`ftops models` lists them"
            )
    try:
        tags = version_tags(name, version)
    except UnknownVersion as e:
        raise FtopsError(f"unknown adapter {spec}: {e}; `ftops models` lists the versions") from e
    if tags.get(TAG_BASE_NAME) is None:
        raise FtopsError(f"adapter {spec}: version {version} has no {TAG_BASE_NAME} tag; register it with `ftops gate`")
    base = load_base(tags[TAG_BASE_NAME])
    if (why := refusal(name, version, tags, base)) is not None:
        raise FtopsError(f"adapter {spec}: {why}")
    path, manifest = download_adapter(f"models:/{name}/{version}", tmp / "adapters" / f"{name}-{version}")
    if manifest.get("digest") != tags[TAG_ADAPTER_DIGEST]:
        raise FtopsError(f"adapter {spec}: its files are not the ones the gate verified (digest mismatch)")
    run_id = mlflow_client().get_model_version(name, version).run_id
    return AdapterChoice(
        f"{name}:{version}",
        path,
        int((manifest.get("lora") or {}).get("r") or 8),
        base.name,
        base.sha256,
        run_id or None,
        name,
        version,
    )


def run_adapter(run_id: str, tmp: Path) -> AdapterChoice:
    """The adapter of training run ``run_id`` (verified against its manifest)."""
    from ftops.registry import eval as ev

    path, manifest = ev.fetch_adapter(run_id, tmp / "adapters" / "run")
    return AdapterChoice(
        f"run {run_id[:8]}",
        path,
        int((manifest.get("lora") or {}).get("r") or 8),
        manifest["base"]["name"],
        manifest["base"]["sha256"],
        run_id,
    )


def parse_hosted(config: AdviseConfig, prices) -> list[tuple[str, str | None]]:
    """``(model, price key or None)`` for each ``--hosted-model``; a usage error for an unknown explicit key."""
    if config.hosted_models and not config.hosted_url:
        raise UsageError("--hosted-model needs --hosted-url (the OpenAI-compatible base URL that serves it)")
    if config.hosted_url and not config.hosted_models:
        raise UsageError("--hosted-url needs at least one --hosted-model")
    out = []
    for item in config.hosted_models:
        model, _, key = item.partition("=")
        if not model:
            raise UsageError(f"--hosted-model {item!r}: expected MODEL or MODEL=PRICE_KEY")
        if key and key not in prices.models:
            raise UsageError(f"--hosted-model {item!r}: no price row {key!r} in the price table")
        if not key:
            key = next(
                (k for k, p in prices.models.items() if model in (k, p.model) or k.endswith("/" + model)),
                "",
            )
        out.append((model, key or None))
    return out


# --------------------------------------------------------------------------------------------- prompts
def system_prompt(train: list[dict]) -> str | None:
    """The training split's most common system prompt (None when it has none)."""
    found = Counter(str(m["content"]) for r in train for m in r["messages"][:1] if m["role"] == "system")
    return found.most_common(1)[0][0] if found else None


def _query(row: dict, system: str | None) -> tuple[list[dict], list[dict]]:
    """``(system messages, the rest but the reference)`` of a held-out row, the training system prompt standing in
    when the row has none."""
    messages = row["messages"][:-1]
    own = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    if not own and system:
        own = [{"role": "system", "content": system}]
    return own, rest


def _turns(example: dict) -> list[dict]:
    return [m for m in example["messages"] if m["role"] != "system"]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _user_text(messages: list[dict]) -> str:
    return "\n".join(str(m["content"]) for m in messages if m["role"] == "user")


def build_prompts(data: Data, k: int) -> dict[str, list[list[dict]]]:
    """The conversations of zero-shot, few-shot and retrieval for every held-out row."""
    from rank_bm25 import BM25Okapi

    system = system_prompt(data.train)
    shots = random.Random(0).sample(data.train, k)
    bm25 = BM25Okapi([_words(_user_text(r["messages"])) or ["_"] for r in data.train])
    out: dict[str, list[list[dict]]] = {"zero-shot": [], "few-shot": [], "retrieval": []}
    for row in data.test:
        own, rest = _query(row, system)
        scores = bm25.get_scores(_words(_user_text(rest)) or ["_"])
        best = sorted(range(len(data.train)), key=lambda i: (-scores[i], i))[:k]
        out["zero-shot"].append(own + rest)
        out["few-shot"].append(own + [m for ex in shots for m in _turns(ex)] + rest)
        out["retrieval"].append(own + [m for i in reversed(best) for m in _turns(data.train[i])] + rest)
    return out


# --------------------------------------------------------------------------------------------- answering
def answer_local(
    engine, conversations: list[list[dict]], adapter: Path | None, config: AdviseConfig, tokens
) -> Answers:
    """Answer in batches of ``batch_size``; a query's latency is its batch's wall time (the offline engine returns
    a batch at once), the busy time the union of the batches' intervals."""
    from ftops.costs.usage import busy_seconds

    gens, latencies, intervals = [], [], []
    for i in range(0, len(conversations), config.batch_size):
        batch = conversations[i : i + config.batch_size]
        start = time.time()
        gens += engine.chat(batch, adapter, config.max_new_tokens)
        end = time.time()
        intervals.append((start, end))
        latencies += [end - start] * len(batch)
    return Answers(gens, [tokens(c) for c in conversations], latencies, busy_seconds(intervals))


def hosted_client(config: AdviseConfig):
    """An ``openai`` client on ``--hosted-url`` and whether it answers: ``(client, None)`` or ``(None, why not)``."""
    import os

    import openai

    client = openai.OpenAI(
        base_url=config.hosted_url,
        api_key=os.environ.get(config.hosted_api_key_env) or "none",
        max_retries=1,
        timeout=120,
    )
    try:
        client.with_options(timeout=15).models.list()
    except openai.OpenAIError as e:
        detail = " ".join(str(e).split())[:200]
        state = "refused the request" if isinstance(e, openai.APIStatusError) else "unreachable"
        return None, f"hosted URL {config.hosted_url} {state} ({type(e).__name__}: {detail}); hosted options skipped"
    return client, None


def answer_hosted(client, model: str, conversations: list[list[dict]], config: AdviseConfig) -> Answers:
    """Each query as one chat request, ``batch_size`` at once; latency and tokens as the endpoint reported them."""
    from concurrent.futures import ThreadPoolExecutor

    from ftops.costs.usage import busy_seconds
    from ftops.registry.engines import Generation

    def ask(messages):
        start = time.time()
        reply = client.chat.completions.create(
            model=model, messages=messages, max_tokens=config.max_new_tokens, temperature=0
        )
        end = time.time()
        text = reply.choices[0].message.content or ""
        return Generation(text, reply.usage.completion_tokens, end - start), reply.usage.prompt_tokens, (start, end)

    with ThreadPoolExecutor(max_workers=config.batch_size) as pool:
        done = list(pool.map(ask, conversations))
    gens = [d[0] for d in done]
    return Answers(gens, [d[1] for d in done], [g.latency_s for g in gens], busy_seconds([d[2] for d in done]))


# --------------------------------------------------------------------------------------------- the job
def advise(config: AdviseConfig) -> dict:
    """Compare every option on the held-out split; write the report, chart and JSON into ``config.out``, log them as
    an MLflow run, and return the report as a dict. Bad input fails before any model starts."""
    from ftops.costs.tables import load_hardware, load_prices

    prices, hardware = load_prices(), load_hardware()
    hardware.instance(config.replica or hardware.default)  # an unknown --replica: one line naming the choices
    for key in (config.price_base, config.price_fine_tuned):
        if key not in prices.models:
            raise UsageError(f"price row {key!r} is not in the price table ({', '.join(sorted(prices.models))})")
    hosted = parse_hosted(config, prices)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ftops-advise-") as tmp:
        # 1. inputs: the splits, k, the adapters and their base, the hosted endpoint
        data, adapters, base = load_inputs(config, Path(tmp))
        client = None
        if hosted:
            client, why = hosted_client(config)
            if why:
                notes.append(why)
                print(f"ftops advise: note: {why}; the rest still runs", file=sys.stderr)
        # 2. the options and their prompts; every prompt must fit the context
        options = build_options(config, data, adapters, hosted if client is not None else [], notes)
        tokens = prompt_counter(base.path)
        longest = max(tokens(c) for o in options for c in o.conversations)
        if longest + config.max_new_tokens > config.max_model_len:
            raise FtopsError(
                f"the longest prompt is {longest} tokens (k={config.k}): with max_new_tokens {config.max_new_tokens} "
                f"it does not fit max_model_len {config.max_model_len}; lower --k or raise --max-model-len"
            )
        # 3. answer and score every option on the same held-out rows
        json_task = answer_options(config, data, base, adapters, options, client, tokens, notes)
    # 4. costs, break-even, warnings, the recommendation; then the report, chart, JSON and MLflow run
    report = summarize(config, data, base, adapters, options, json_task, notes, prices, hardware)
    return write_outputs(report, config)


def load_inputs(config: AdviseConfig, tmp: Path) -> tuple[Data, list[AdapterChoice], object]:
    """The splits (held-out cut to ``max_examples``), the adapters to compare and their one base."""
    from ftops.base import SMOLLM2_NAME, load_base

    data = load_data(config.source, tmp)
    data.test = data.test[: config.max_examples]
    if config.k > len(data.train):
        raise FtopsError(
            f"--k {config.k} is larger than the training split ({len(data.train)} examples in "
            f"{data.train_path}); lower --k"
        )
    adapters = [resolve_adapter(s, tmp) for s in config.adapters]
    if data.run_id and all(a.run_id != data.run_id for a in adapters):  # the run's own, unless registered above
        adapters.insert(0, run_adapter(data.run_id, tmp))
    base = load_base(adapters[0].base_name if adapters else (config.base or SMOLLM2_NAME))
    for a in adapters:  # one base at a time: every option answers on the same weights
        check_base(f"adapter {a.label}", {"name": a.base_name, "sha256": a.base_sha256}, base)
    return data, adapters, base


def build_options(
    config: AdviseConfig,
    data: Data,
    adapters: list[AdapterChoice],
    hosted: list[tuple[str, str | None]],
    notes: list[str],
) -> list[Option]:
    """Zero-shot, few-shot, retrieval, each adapter (zero-shot prompt) and each hosted model (zero-shot prompt)."""
    prompts = build_prompts(data, config.k)
    k, base_row, ft_row = config.k, config.price_base, config.price_fine_tuned
    options = [
        Option("zero_shot", "zero-shot", "zero-shot", prompts["zero-shot"], price_key=base_row),
        Option(f"few_shot_k{k}", f"few-shot (k={k})", "few-shot", prompts["few-shot"], price_key=base_row),
        Option(f"retrieval_k{k}", f"retrieval (BM25, k={k})", "retrieval", prompts["retrieval"], price_key=base_row),
    ]
    for a in adapters:
        label = "adapter_" + _slug(a.label)
        options.append(Option(label, f"adapter {a.label}", "adapter", prompts["zero-shot"], a, price_key=ft_row))
    for model, key in hosted:
        options.append(
            Option("hosted_" + _slug(model), f"hosted {model}", "hosted", prompts["zero-shot"], None, model, key)
        )
        if key is None:
            notes.append(f"hosted {model}: no price row for it; give --hosted-model {model}=PROVIDER/MODEL")
    return options


def prompt_counter(base_path: str):
    """Prompt tokens of a conversation as the engines count them: the base's chat template, then its tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)

    def tokens(conversation: list[dict]) -> int:
        text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return tokens


def answer_options(
    config: AdviseConfig,
    data: Data,
    base,
    adapters: list[AdapterChoice],
    options: list[Option],
    client,
    tokens,
    notes: list[str],
) -> bool:
    """Answer every option on the gate's engine (hosted ones through ``client``) and score it with the gate's
    metrics; a hosted model that fails is a note. Returns whether the task is a JSON task."""
    from ftops.registry.engines import make_engine
    from ftops.registry.eval_config import EvalConfig
    from ftops.registry.scoring import load_schema, parse_json_object, side_metrics

    refs = [str(r["messages"][-1]["content"]) for r in data.test]
    ref_objects = [parse_json_object(r) for r in refs]
    json_task = all(o is not None for o in ref_objects)
    schema = load_schema(config.format_schema, ref_objects) if json_task else None
    eval_config = EvalConfig(
        engine=config.engine,
        max_new_tokens=config.max_new_tokens,
        regression=config.regression,
        regression_limit=config.regression_limit,
        format_schema=config.format_schema,
        max_model_len=config.max_model_len,
        kv_cache_gib=config.kv_cache_gib,
        batch_size=config.batch_size,
    )
    engine = make_engine(eval_config, base.path, max([a.rank for a in adapters] or [8]))
    base_regression = None
    try:
        # warm up (first-call set-up, an adapter's first load) outside the measured busy time
        for path in {None, *(a.path for a in adapters)}:
            engine.chat(options[0].conversations[:1], path, 1)
        for o in options:
            print(f"advise: {o.name} on {len(data.test)} held-out examples", file=sys.stderr, flush=True)
            if o.kind == "hosted":
                try:
                    o.answers = answer_hosted(client, o.hosted_model, o.conversations, config)
                except Exception as e:  # openai.OpenAIError and its kin: note it, keep the rest
                    notes.append(f"hosted {o.hosted_model}: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
                    continue
            else:
                o.answers = answer_local(engine, o.conversations, o.adapter.path if o.adapter else None, config, tokens)
            o.metrics = side_metrics("", o.answers.gens, refs, json_task, schema)
            if config.regression and o.kind != "hosted":  # prompt options keep the base's weights: its score
                if o.adapter is None and base_regression is None:
                    base_regression = _regression_score(engine, None, eval_config)
                o.metrics["regression_score"] = (
                    _regression_score(engine, o.adapter.path, eval_config) if o.adapter else base_regression
                )
    finally:
        if hasattr(engine, "close"):
            engine.close()
    return json_task


def summarize(
    config: AdviseConfig,
    data: Data,
    base,
    adapters: list[AdapterChoice],
    options: list[Option],
    json_task: bool,
    notes: list[str],
    prices,
    hardware,
) -> dict:
    """The report: per option its quality, tokens, costs and latency; each adapter's training cost and break-even;
    the price rows' availability warnings; the recommendation."""
    replica = config.replica or hardware.default
    usd_per_hour = hardware.instance(replica).usd_per_hour
    training = {a.label: _training(a, prices, usd_per_hour) for a in adapters}
    primary = "field_accuracy" if json_task else "accuracy"
    rows = [_option_row(o, primary, prices, usd_per_hour) for o in options if o.answers is not None]
    for row in rows:
        if row["kind"] == "adapter":
            row["training"] = training[row["adapter"]["label"]]
            row["break_even"] = break_even(row, rows, config.queries_per_day, config.price_fine_tuned)
            if not row["training"].get("available"):
                notes.append(f"{row['name']}: training cost unknown ({row['training'].get('reason')})")
    report = {
        "generated_at": datetime.now(UTC).isoformat(),
        "source": config.source,
        "base": {"name": base.name, "sha256": base.sha256},
        "held_out_examples": len(data.test),
        "training_examples": len(data.train),
        "json_task": json_task,
        "quality_metric": primary,
        "config": config.model_dump(mode="json"),
        "replica": {"name": replica, "usd_per_hour": usd_per_hour},
        "prices_as_of": prices.as_of.isoformat(),
        "hardware_as_of": hardware.as_of.isoformat(),
        "options": rows,
        "warnings": availability_warnings(rows, prices, date.today(), config.warn_days),
        "notes": notes,
    }
    report["recommendation"] = recommend(
        report,
        tolerance=config.tolerance,
        payback_months=config.payback_months,
        queries_per_day=config.queries_per_day,
    )
    return report


def _slug(text: str) -> str:
    """An MLflow-safe metric name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _regression_score(engine, adapter: Path | None, eval_config) -> float | None:
    from ftops.registry import eval as ev

    items, _, ok = ev.regression_answers(engine, adapter, eval_config)
    return sum(ok) / len(items) if items else None


def _training(a: AdapterChoice, prices, usd_per_hour: float) -> dict:
    from ftops.costs.runs import training_cost, training_cost_for_version

    if a.name:
        return training_cost_for_version(a.name, a.version, prices, usd_per_hour)
    return training_cost(a.run_id, prices, usd_per_hour)


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


def _option_row(o: Option, primary: str, prices, usd_per_hour: float) -> dict:
    """Tokens, costs and latency of one option; every figure recomputable from the others and the two tables."""
    a, n = o.answers, len(o.answers.gens)
    prompt, completion = sum(a.prompt_tokens), sum(g.tokens for g in a.gens)
    hosted_usd = prices.hosted_cost(prompt, completion)
    self_hosted = usd_per_hour * a.busy_s / 3600 / n * 1000 if o.kind != "hosted" else None
    priced = hosted_usd[o.price_key] / n * 1000 if o.price_key else None
    row = {
        "id": o.id,
        "name": o.name,
        "kind": o.kind,
        "tier": TIERS[o.kind],
        "queries": n,
        "metrics": o.metrics,
        "quality": o.metrics.get(primary, 0.0),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "prompt_tokens_per_query": prompt / n,
        "completion_tokens_per_query": completion / n,
        "busy_s": a.busy_s,
        "latency_p50_s": _percentile(a.latencies, 50),
        "latency_p95_s": _percentile(a.latencies, 95),
        "self_hosted_usd_per_1k": self_hosted,
        "price_key": o.price_key,
        "hosted_usd_per_1k": priced,
        # what running this option costs: the replica for local options, the API's price for hosted ones
        "usd_per_1k": self_hosted if o.kind != "hosted" else priced,
    }
    if o.adapter:
        row["adapter"] = {
            "label": o.adapter.label,
            "name": o.adapter.name,
            "version": o.adapter.version,
            "run_id": o.adapter.run_id,
        }
    if o.hosted_model:
        row["hosted_model"] = o.hosted_model
    return row


# --------------------------------------------------------------------------------------------- output
def write_outputs(report: dict, config: AdviseConfig) -> dict:
    """report.md, advice.json and advice.png in ``config.out``; the MLflow run ``advise``, tagged with the adapters."""
    import mlflow

    from ftops import settings

    out = config.out or settings.home() / "advise" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    png = plot(report, out / "advice.png")
    settings.configure_mlflow()
    adapters = [r["adapter"] for r in report["options"] if r["kind"] == "adapter"]
    tags = {
        "ftops.kind": "advise",
        "ftops.advise.source": report["source"],
        "ftops.advise.recommendation": str(report["recommendation"]["option"]),
        "ftops.advise.adapters": ",".join(a["label"] for a in adapters),
        "ftops.advise.adapter_runs": ",".join(a["run_id"] or "" for a in adapters),
    }
    tags |= {f"ftops.advise.adapter.{a['name']}": a["version"] for a in adapters if a["name"]}
    with mlflow.start_run(experiment_id=settings.experiment_id(), run_name="advise", tags=tags) as run:
        report["mlflow_run_id"] = run.info.run_id
        report["out"] = {"report": str(out / "report.md"), "json": str(out / "advice.json"), "chart": str(png)}
        (out / "report.md").write_text(markdown(report))
        (out / "advice.json").write_text(json.dumps(report, indent=2, default=str))
        mlflow.log_params(
            {"k": config.k, "queries_per_day": config.queries_per_day, "examples": report["held_out_examples"]}
        )
        metrics = {}
        for r in report["options"]:
            metrics[f"{r['id']}.quality"] = r["quality"]
            if r["usd_per_1k"] is not None:
                metrics[f"{r['id']}.usd_per_1k"] = r["usd_per_1k"]
        mlflow.log_metrics(metrics)
        for f in ("report.md", "advice.json", "advice.png"):
            mlflow.log_artifact(str(out / f), "advise")
    return report
