"""``ftops demo``: the whole flow, end to end, on embedded defaults.

data (generate, validate, split; the base answers general prompts as replay) -> train (QLoRA, tickets + replay) ->
gate (eval adapter and base, register @staging) -> promote (@production) -> serve (BentoML + vLLM, real HTTP) -> ask
adapter and base the same questions -> cost report -> ``ftops advise`` (prompt, few-shot, retrieval and the adapter on
a few held-out tickets: should you have fine-tuned?).
Each step calls the same public function its own subcommand calls; nothing here is special to the demo.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pydantic import Field

from ftops import settings
from ftops.config import StrictConfig, add_options, from_options
from ftops.env import FTOPS_ADMIN_KEY, FTOPS_API_KEY, FTOPS_HOME
from ftops.errors import FtopsError
from ftops.manifest import sha256_file
from ftops.registry.policy import POLICIES_DIR

REPO = Path(__file__).resolve().parents[1]
#: asked of the served adapter and base after the held-out tickets (a regression-suite item, not in any training data)
GENERAL_QUESTION = "What is the capital of France?"


class DemoConfig(StrictConfig):
    """What the demo runs; the defaults are the documented demo. ``ftops demo`` builds its options from these fields."""

    base: str = "smollm2-135m-instruct"
    """Imported base model to fine-tune (smollm2 is imported automatically when missing)."""
    examples: int = Field(400, ge=30)
    """Demo tickets to generate, split 80/10/10 (at least 30)."""
    seed: int = 0
    """Seed of the ticket generator."""
    replay: int = Field(160, ge=0)
    """General prompts the base answers for replay, mixed into training against forgetting (0: none)."""
    train_config: Path = REPO / "configs" / "demo.yaml"
    """Training job YAML."""
    overrides: list[str] = Field(default_factory=list)
    """Training config override KEY=VALUE, repeatable (e.g. --set max_steps=20)."""
    policy: Path = POLICIES_DIR / "demo.yaml"
    """Gate policy YAML (the demo's own: per-field accuracy floors that minutes of CPU training can reach)."""
    model_name: str = "ticket-extractor"
    """Registered model name of the adapter."""
    questions: int = Field(3, ge=1)
    """Held-out tickets to ask the served adapter and base."""
    serve: bool = True
    """Start the service and send real requests (--no-serve: stop after promotion)."""
    port: int = Field(0, ge=0, le=65535)
    """Port of the demo service (0: a free one)."""
    serve_timeout_s: float = Field(600.0, gt=0)
    """How long to wait for the service to be ready, in seconds."""
    advise: bool = True
    """End with ``ftops advise`` for the demo run: zero-shot, few-shot, retrieval and the adapter side by side."""
    advise_examples: int = Field(10, ge=1)
    """Held-out tickets the advice answers per option (few, so the demo stays minutes on 2 CPU cores)."""
    advise_regression: int = Field(10, ge=1)
    """Regression-suite items the advice scores the base and the adapter on."""


#: ``ftops demo`` options whose names differ from the fields
_FLAGS = {"train_config": "--config", "overrides": "--set", "model_name": "--name"}


def _step(n: int, total: int, text: str) -> None:
    print(f"\n[{n}/{total}] {text}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_data(config: DemoConfig, work: Path, base) -> dict[str, Path]:
    from transformers import AutoTokenizer

    from ftops.expectations.demo_data import write_tickets
    from ftops.expectations.split import split_file
    from ftops.expectations.validate import validate_file

    tickets = write_tickets(work / "tickets.jsonl", n=config.examples, seed=config.seed)
    report = validate_file(
        tickets, tokenizer=AutoTokenizer.from_pretrained(base.path), context_length=base.context_length
    )
    print(
        f"validated {tickets}: {len(report.examples)} examples, {len(report.errors)} errors, "
        f"{len(report.warnings)} warnings (format {report.format})"
    )
    if not report.valid:
        raise FtopsError(f"{tickets}: demo data failed validation: {report.errors[0].message}")
    splits = split_file(tickets, work / "data")
    sizes = {k: sum(1 for _ in open(p)) for k, p in splits.items()}
    print("split: " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + f" -> {work / 'data'}")
    if config.replay:
        splits["replay"] = prepare_replay(config, work, base)
    return splits


def prepare_replay(config: DemoConfig, work: Path, base) -> Path:
    """The base's own answers to ``config.replay`` general prompts (``ftops data replay``), kept between demo runs
    while the base and the prompts are the same (answering takes a few CPU minutes)."""
    import hashlib

    from ftops.training.replay import prompts_for, write_replay

    out = work / "data" / "replay.jsonl"
    stamp = out.with_suffix(".json")
    prompts_sha256 = hashlib.sha256("\n".join(prompts_for(config.replay)).encode()).hexdigest()
    wanted = {"base_sha256": base.sha256, "prompts": config.replay, "prompts_sha256": prompts_sha256}
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        recorded = None
    if (
        recorded
        and {k: recorded.get(k) for k in wanted} == wanted
        and out.is_file()
        and recorded.get("sha256") == sha256_file(out)
    ):
        print(f"replay: {recorded['written']} examples answered by {base.name} earlier -> {out}")
        return out
    result = write_replay(base, out, n=config.replay)
    stamp.write_text(json.dumps({**wanted, "written": result.written, "sha256": sha256_file(out)}))
    print(
        f"replay: {result.written} general prompts answered by {base.name} ({result.dropped} unfinished dropped) "
        f"-> {out}"
    )
    return out


def train_adapter(config: DemoConfig, splits: dict[str, Path]) -> str:
    from ftops.training.config import load_config
    from ftops.training.job import train

    overrides = [f"base={config.base}", *(f"data.{k}={v}" for k, v in splits.items()), *config.overrides]
    if "replay" not in splits:
        overrides.insert(1, "data.replay=null")
    job = load_config(config.train_config, overrides)
    run_id = train(job)
    print(f"MLflow run {run_id}")
    return run_id


def gate_and_promote(config: DemoConfig, run_id: str) -> str | None:
    """Gate the run; on pass promote it to production and return its version, on fail return None."""
    from ftops.registry.eval_config import EvalConfig
    from ftops.registry.gate import gate
    from ftops.registry.lifecycle import promote

    # format compliance against the ticket task's own JSON schema, not one derived from the references
    report = gate(run_id, config.policy, config.model_name, eval_config=EvalConfig(format_schema="ticket"))
    print(report.markdown())
    if report.verdict != "pass":
        print(f"the gate refused run {run_id}: nothing was registered, production is unchanged")
        return None
    print(f"registered {config.model_name} version {report.version} at @staging")
    move = promote(config.model_name, to="production")
    print(f"promoted: {json.dumps(move.as_dict())}")
    return str(report.version)


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise FtopsError(f"the service exited with code {proc.returncode} before it was ready; see its log above")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise FtopsError(f"the service was not ready after {timeout:.0f} s")


def serve_and_ask(config: DemoConfig, work: Path, base, test_split: Path, with_adapter: bool) -> None:
    import yaml
    from openai import OpenAI

    port = config.port or _free_port()
    serve_config = work / "serve.yaml"
    adapters = [f"{config.model_name}@production"] if with_adapter else []
    serve_config.write_text(yaml.safe_dump({"base": base.name, "adapters": adapters, "require_adapters": True}))
    api_key = "ftops-demo-" + os.urandom(12).hex()
    env = {
        **os.environ,
        FTOPS_API_KEY.name: api_key,
        FTOPS_ADMIN_KEY.name: api_key,
        FTOPS_HOME.name: str(settings.home()),
    }
    cmd = [sys.executable, "-m", "ftops.cli", "serve", "--port", str(port), "--config", str(serve_config)]
    print("$ " + " ".join(cmd[2:]), flush=True)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, config.serve_timeout_s)
        client = OpenAI(base_url=url + "/v1", api_key=api_key)
        models = client.models.list().data
        print("served models: " + ", ".join(m.id for m in models))
        rows = [json.loads(line) for line in test_split.read_text().splitlines() if line.strip()]
        asks = [
            (
                f"held-out ticket {i}",
                [m for m in row["messages"] if m["role"] != "assistant"],
                row["messages"][-1]["content"],
            )
            for i, row in enumerate(rows[: config.questions], 1)
        ]
        # and one general question: has the adapter kept what the base could do? (the gate's retention rule)
        asks.append(("general question", [{"role": "user", "content": GENERAL_QUESTION}], "(an answer in prose)"))
        for title, messages, reference in asks:
            print(f"\n--- {title}: {messages[-1]['content']}")
            print(f"expected : {reference}")
            for model in (config.model_name, base.name) if with_adapter else (base.name,):
                reply = client.chat.completions.create(model=model, messages=messages, max_tokens=96, temperature=0)
                text = (reply.choices[0].message.content or "").strip().replace("\n", " ")
                print(f"{'adapter' if model == config.model_name else 'base':9}: {text}")
                print(
                    f"{'':9}  ({reply.usage.prompt_tokens} prompt + {reply.usage.completion_tokens} completion tokens)"
                )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def cost_report(work: Path) -> None:
    from ftops.cli import main

    if main(["cost", "report", "--plot", str(work / "cost.png")]) != 0:
        raise FtopsError("the cost report failed; see above")
    print(f"cost chart: {work / 'cost.png'} (also logged to MLflow)")


def advice(config: DemoConfig, work: Path, run_id: str, version: str | None) -> None:
    """``ftops advise`` for the demo run (its registered version when the gate passed), bounded to a few examples."""
    from ftops.advise.measure import AdviseConfig, advise
    from ftops.advise.report import markdown

    report = advise(
        AdviseConfig(
            source=run_id,
            adapters=[f"{config.model_name}:{version}"] if version else [],
            k=3,
            max_examples=config.advise_examples,
            regression_limit=config.advise_regression,
            format_schema="ticket",
            out=work / "advise",
        )
    )
    print(markdown(report))
    print(f"advice: {work / 'advise'} (report.md, advice.png, advice.json; MLflow run {report['mlflow_run_id']})")


def run(config: DemoConfig) -> int:
    from ftops.base import SMOLLM2, SMOLLM2_NAME, import_base, load_base

    settings.configure_mlflow()
    work = settings.home() / "demo"
    work.mkdir(parents=True, exist_ok=True)
    total = 6 if config.serve else (5 if config.advise else 4)  # with the service, the advice closes step 6
    started = time.monotonic()

    _step(1, total, f"base model {config.base}")
    if config.base == SMOLLM2_NAME:
        base, _ = import_base(SMOLLM2)
    else:
        base = load_base(config.base)
    print(f"{base.name}: {base.num_parameters / 1e6:.1f}M parameters, sha256 {base.sha256[:12]}")

    _step(
        2,
        total,
        "data: generate demo tickets, validate, split 80/10/10"
        + (", replay prompts answered by the base" if config.replay else ""),
    )
    splits = prepare_data(config, work, base)

    _step(3, total, f"train: {config.train_config.name} {' '.join(config.overrides)}".rstrip())
    run_id = train_adapter(config, splits)

    _step(4, total, "gate: evaluate adapter and base, register on pass, promote to production")
    version = gate_and_promote(config, run_id)

    if config.serve:
        who = "the adapter and the base" if version else "the base alone (the gate refused the adapter)"
        _step(5, total, f"serve: BentoML + vLLM, asking {who} through the openai client")
        serve_and_ask(config, work, base, splits["test"], with_adapter=version is not None)
        _step(6, total, "cost report" + (", then the advice: should you fine-tune?" if config.advise else ""))
        cost_report(work)
    elif config.advise:
        _step(5, total, "advice: should you fine-tune?")
    if config.advise:
        advice(config, work, run_id, version)
    if version is None:
        raise FtopsError(f"the gate refused run {run_id}; its report is above and on the run in MLflow")

    print(
        f"\ndemo finished in {time.monotonic() - started:.0f} s. MLflow UI: `make ui` (http://127.0.0.1:5000); "
        f"state under {settings.home()}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole flow end to end (data -> train -> gate -> promote -> serve -> cost)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Run the whole flow on embedded defaults: generate and validate the demo ticket data set, train a QLoRA adapter on
SmolLM2-135M-Instruct, evaluate it against the base, register it through the promotion gate, promote it to
production, serve it with vLLM behind the OpenAI-compatible API, ask the adapter and the base the same held-out
questions, and print the cost report. State goes to ./.ftops (FTOPS_HOME).

examples:
  ftops demo
  ftops demo --examples 200 --set max_steps=20 --no-serve
  ftops demo --replay 0          # no replay data: watch the gate's retention rule refuse a forgetful adapter""",
    )
    add_options(p, DemoConfig, flags=_FLAGS)
    p.set_defaults(func=lambda args: run(from_options(args, DemoConfig, flags=_FLAGS)))
