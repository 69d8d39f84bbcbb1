"""The ``ftops`` command: one console script, one subcommand per stage of the flow.

Exit codes (a contract other tools rely on): 0 success, 1 the work ran and said no (invalid data, gate failed,
bad input), 2 usage errors. Each stage module adds its subcommands with ``register(subparsers)``; heavy libraries
are imported inside the handlers so that ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ftops.errors import FtopsError
from ftops.redact import redact

DESCRIPTION = """\
ftops takes a fine-tuned LLM from training data to production traffic:

  data validate / data split   check a chat/completion/alpaca JSONL file, dedup and split it 80/10/10
  data replay                  the base's own answers to general prompts, mixed into training against forgetting
  base import                  register a base model (the SmolLM2 GGUF a package ships, or a local HF folder)
  train                        QLoRA/LoRA job logging adapter, curves, datasets and lineage to MLflow
  eval / gate                  held-out accuracy, format, improvement and retention; register what passes
  promote / rollback / models  move the registry aliases staging -> production
  serve                        BentoML + vLLM OpenAI-compatible server following the registry
  cost report                  what every token cost, against hosted APIs
  advise                       should you fine-tune? prompt, few-shot, retrieval, adapter side by side, in $
  demo                         the whole flow, end to end

State lives in ./.ftops (FTOPS_HOME); MLFLOW_TRACKING_URI points at a real MLflow server instead.
"""


#: The modules that add subcommands, in the order of the flow; each has ``register(subparsers)``.
COMMAND_MODULES = (
    "ftops.cli.data",
    "ftops.cli.base",
    "ftops.cli.train",
    "ftops.cli.jobs",
    "ftops.cli.registry",
    "ftops.cli.serve",
    "ftops.cli.cost",
    "ftops.cli.advise",
    "ftops.cli.demo",
)


#: ``ftops serve`` runs the composed service: inference and the fine-tuning API behind one base_url
REGISTER_OPTIONS = {"ftops.cli.serve": {"service": "ftops.cli.service:FtopsLLM"}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftops", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, **REGISTER_OPTIONS.get(name, {}))
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # vLLM logs to stdout by default; standard output is the command's answer (`--json`, the run id), logs go to stderr
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FtopsError as e:
        print(f"ftops {args.command}: error: {redact(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"ftops {args.command}: interrupted", file=sys.stderr)
        return 130
