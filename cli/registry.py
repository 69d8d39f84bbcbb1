"""``ftops eval|gate|promote|rollback|models``: evaluation, the promotion gate and the registry lifecycle."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ftops.config import add_options, from_options
from ftops.registry.eval import evaluate
from ftops.registry.eval_config import EvalConfig
from ftops.registry.gate import gate
from ftops.registry.lifecycle import list_models, promote, rollback

_RAW = argparse.RawDescriptionHelpFormatter


#: ``ftops eval``/``gate`` options: every EvalConfig field but the rubric; two keep their shorter historic names.
_EVAL_FLAGS = {
    "format_schema": "--schema",
    "judge_base_url": "--judge-url",
    "judge_api_key_env": "--judge-key-env",
}


def _eval_options(p: argparse.ArgumentParser) -> None:
    fields = [f for f in EvalConfig.model_fields if f != "judge_rubric"]
    add_options(p.add_argument_group("evaluation"), EvalConfig, fields=fields, flags=_EVAL_FLAGS)


def _eval_config(args: argparse.Namespace):
    return from_options(args, EvalConfig, flags=_EVAL_FLAGS)


def register(sub: argparse._SubParsersAction) -> None:
    for add in (_add_eval, _add_gate, _add_promote, _add_rollback, _add_models):
        add(sub)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a run's adapter and its base (held-out + regression suite)",
        formatter_class=_RAW,
        description="""\
Evaluate the LoRA adapter of training run RUN_ID against its base model, with greedy decoding:
  held-out split (artifact data/test.jsonl): exact-match accuracy; for JSON answers also per-field accuracy and
    format compliance (valid JSON object + schema); improvement = candidate accuracy - base accuracy
  regression suite (ftops.expectations.regression): regression_score of both; retention = candidate / base
  answer length (tokens), latency (s per answer at batch throughput); optional LLM-as-judge score 0-10

Metrics are logged on the run as eval.* (eval.accuracy, eval.base.accuracy, eval.retention ...), per-example
answers as the MLflow table eval/examples.json.

examples:
  ftops eval 3f2a...c9
  ftops eval 3f2a...c9 --engine transformers --max-examples 20 --json
  OPENAI_API_KEY=... ftops eval 3f2a...c9 --judge-url https://api.openai.com/v1""",
    )
    p.add_argument("run_id", metavar="RUN_ID", help="the MLflow run id `ftops train` printed")
    _eval_options(p)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=_eval)


def _add_gate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gate",
        help="judge a run against a policy; register it at @staging if it passes",
        formatter_class=_RAW,
        description="""\
Check RUN_ID's held-out split shares no example with its training or replay data (exact or normalised text; an
overlap is refused), evaluate it, then judge every rule of the policy (registry/policies/*.yaml): absolute floors
(accuracy >= 0.8), relative rules (retention >= 0.95, improvement >= 0.05) and rules against the current
production version (max_drop_vs_production; a registry read error stops the gate, it never counts as "no
production"). Each rule is printed pass/fail with its values.

Metrics already on the run are reused only when they came from the same evaluation settings (data digests, schema,
engine, limits, suite version: hashed in eval/settings.json and tag ftops.eval.settings_sha256); otherwise, or with
--reevaluate, the gate evaluates again.

pass (exit 0): the adapter is checked against its base (name, sha256, rank, target modules, safetensors sha256),
  a model version is registered with lineage tags and the report as its description, alias 'staging' moves to it.
  The version carries the settings hash and the adapter's digest; serving loads only what matches them.
fail (exit 1): nothing is registered and no alias moves; the report is printed and logged on the run
  (gate/report.md, gate/report.json, tag ftops.gate.verdict=fail).

examples:
  ftops gate 3f2a...c9
  ftops gate 3f2a...c9 --policy my-policy.yaml --name support-tickets --json""",
    )
    p.add_argument("run_id", metavar="RUN_ID", help="the MLflow run id `ftops train` printed")
    p.add_argument("--policy", help="policy YAML (default: registry/policies/default.yaml)")
    p.add_argument("--name", help="registered model name (default: run tag ftops.model_name, else <base>-lora)")
    p.add_argument("--reevaluate", action="store_true", help="evaluate again even if the run has eval.* metrics")
    _eval_options(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_gate)


def _add_promote(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "promote",
        help="move alias production to the staging version",
        formatter_class=_RAW,
        description="""\
Move alias 'production' of model NAME to its 'staging' version (or --version N), after re-checking it: it passed
the gate, adapts the same base as the current production version, and is not worse than it by more than the
policy's max_drop_vs_production rules. The previous production version is recorded (registered-model tag
ftops.production.history) so that `ftops rollback NAME` is exact. Serving follows the alias.
Moving the alias in the MLflow UI is a promotion too.

Promotions at once, from this machine or several, take turns on the registry lock: a file beside the embedded
store; on a tracking server the registered model ftops-registry-lock (exists while held), or with
FTOPS_REGISTRY_LOCK_URL=postgresql://... a PostgreSQL advisory lock in that database (best: the server's own).

examples:
  ftops promote support-tickets --to production
  ftops promote support-tickets --to production --version 3 --json""",
    )
    p.add_argument("name", metavar="NAME", help="registered model name")
    p.add_argument("--to", required=True, choices=["production"], help="the alias to move (production)")
    p.add_argument("--version", help="promote this version instead of the one at staging")
    p.add_argument("--policy", help="re-check with this policy instead of the rules the version passed")
    p.add_argument("--json", action="store_true", help="print what moved as JSON")
    p.set_defaults(func=_promote)


def _add_rollback(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rollback",
        help="return production to the previous production version",
        formatter_class=_RAW,
        description="""\
Move alias 'production' of model NAME back to the version that held it before the current one (from the
registered-model tag ftops.production.history; a move made in the MLflow UI counts), and revoke the version it
leaves: tags ftops.revoked=true, ftops.revoked.by ($FTOPS_ACTOR, else user@host), ftops.revoked.reason and
ftops.revoked.at on that version. Serving never loads a revoked version again (pinned NAME:VERSION included) and
`ftops promote` refuses it; delete its tag ftops.revoked in the MLflow UI to allow it again.

examples:
  ftops rollback support-tickets
  FTOPS_ACTOR=oncall ftops rollback support-tickets --reason 'answers in French since v7'""",
    )
    p.add_argument("name", metavar="NAME", help="registered model name")
    p.add_argument("--reason", help="why, recorded on the revoked version (default: rolled back ... by WHO)")
    p.add_argument("--json", action="store_true", help="print what moved as JSON")
    p.set_defaults(func=_rollback)


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list registered models, versions, aliases and gate verdicts",
        formatter_class=_RAW,
        description="List registered models (or one, NAME) with every version's aliases, gate verdict, policy, "
        "run, key metrics and revocation (who, when, why), newest first."
        "\n\nexamples:\n  ftops models\n  ftops models support-tickets --json",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="only this registered model")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_models)


def _quiet(models: bool = False) -> None:
    """No progress bars on stderr: the CLI prints results and one-line errors."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if models:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging  # heavy: transformers loads only for the commands that run models

        logging.disable_progress_bar()


def _eval(args: argparse.Namespace) -> int:
    _quiet(models=True)
    result = evaluate(args.run_id, _eval_config(args))
    if args.json:
        print(json.dumps({"run_id": result.run_id, "metrics": result.metrics}, indent=2, sort_keys=True))
    else:
        print(f"run {result.run_id}: logged {len(result.metrics)} metrics (eval.*) and table eval/examples.json")
        for k, v in sorted(result.metrics.items()):
            print(f"  {k:<24} {v:.4g}")
    return 0


def _gate(args: argparse.Namespace) -> int:
    _quiet(models=True)
    report = gate(args.run_id, args.policy, args.name, _eval_config(args), reevaluate=args.reevaluate)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    else:
        print(report.markdown())
        if report.verdict == "pass":
            print(
                f"registered {report.model_name} version {report.version} at @staging; "
                f"`ftops promote {report.model_name} --to production` to deploy it"
            )
        else:
            failed = ", ".join(r.rule for r in report.rules if not r.passed)
            print(f"gate FAILED ({failed}): nothing registered", file=sys.stderr)
    return 0 if report.verdict == "pass" else 1


def _promote(args: argparse.Namespace) -> int:
    _quiet()
    move = promote(args.name, args.to, args.version, args.policy)
    if args.json:
        print(json.dumps(move.as_dict(), indent=2))
    elif move.previous == move.version:
        print(f"{move.name} version {move.version} is already at @production (no change)")
    else:
        print(f"{move.name}@production: version {move.previous or 'none'} -> {move.version}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    _quiet()
    move = rollback(args.name, args.reason)
    if args.json:
        print(json.dumps(move.as_dict(), indent=2))
    else:
        print(
            f"{move.name}@production rolled back: version {move.previous} -> {move.version}; "
            f"version {move.previous} revoked ({move.revoked['reason']})"
        )
    return 0


def _models(args: argparse.Namespace) -> int:
    _quiet()
    models = list_models(args.name)
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print("no registered models; `ftops gate RUN_ID` registers the first")
    for m in models:
        print(f"{m['name']}  (production history: {m['production_history'] or 'none'})")
        for v in m["versions"]:
            aliases = ",".join("@" + a for a in v["aliases"]) or "-"
            acc = v["metrics"].get("accuracy")
            ret = v["metrics"].get("retention")
            revoked = v["revoked"]
            print(
                f"  v{v['version']:<4} {aliases:<22} gate={v['verdict'] or '-':<5} policy={v['policy'] or '-':<10} "
                f"accuracy={'-' if acc is None else f'{acc:.3f}'} retention={'-' if ret is None else f'{ret:.3f}'} "
                f"run={v['run_id']}"
                + (f" REVOKED by {revoked['by']} at {revoked['at']}: {revoked['reason']}" if revoked else "")
            )
    return 0
