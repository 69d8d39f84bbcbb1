"""``ftops advise DATA_DIR_OR_RUN``: the command line of ``ftops.advise`` (options built from :class:`AdviseConfig`)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ftops.advise.measure import AdviseConfig, advise
from ftops.advise.report import markdown
from ftops.config import add_options, from_options

#: ``ftops advise`` options whose names differ from the fields
FLAGS = {
    "adapters": "--adapter",
    "hosted_models": "--hosted-model",
    "hosted_api_key_env": "--hosted-key-env",
    "format_schema": "--schema",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "advise",
        help="should you fine-tune? prompt vs few-shot vs retrieval vs adapter, in quality and dollars",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Answer "should you fine-tune?" with your own data: the base with the data's system prompt (zero-shot), with k
training examples in the prompt (few-shot), with the k most similar training examples per query (retrieval, BM25),
each adapter, and hosted models through the openai client, all on the same held-out examples with the gate's
metrics. Per option: quality, tokens per query, self-hosted cost per 1,000 queries (busy time on this hardware
profile), the hosted price, latency p50/p95; break-even of each adapter's training cost; a recommendation in the
guides' order (prompt, then retrieval, then fine-tune). Writes report.md, advice.json and advice.png, logged as
an MLflow run tagged with the adapters.

examples:
  ftops advise .ftops/demo/data --adapter ticket-extractor@production
  ftops advise RUN_ID --k 4 --queries-per-day 5000 --json
  ftops advise data/ --hosted-url https://api.openai.com/v1 --hosted-model gpt-4o-mini""",
    )
    p.add_argument("source", metavar="DATA_DIR_OR_RUN", help=AdviseConfig.model_fields["source"].description)
    fields = [f for f in AdviseConfig.model_fields if f != "source"]
    add_options(p, AdviseConfig, fields=fields, flags=FLAGS)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_advise)


def _advise(args: argparse.Namespace) -> int:
    config = from_options(args, AdviseConfig, flags=FLAGS, source=args.source)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    report = advise(config)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(markdown(report))
        print(f"report, chart and JSON in {Path(report['out']['report']).parent}; MLflow run {report['mlflow_run_id']}")
    return 0
