"""``ftops train CONFIG.yaml [key=value ...]`` and ``ftops export RUN_ID --merged OUT``; the fine-tuning API's
``ftops jobs`` is ``cli/jobs.py``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ftops.training.config import load_config
from ftops.training.export import export_merged
from ftops.training.job import train


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="QLoRA/LoRA job logging adapter, curves, datasets and lineage to MLflow",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Validate the data, train with TRL's SFTTrainer and log one MLflow run: the resolved config as params, per-step
loss / learning rate / tokens/s, validation loss and token accuracy, system metrics, the three splits as inputs with
digests and their validation report, the adapter (safetensors + manifest) and a loss-curve PNG. Prints the run id.

Every config key can be overridden with key=value (dotted keys for nesting); keys are documented in
training/config.py. A killed job continues from its last checkpoint with resume=RUN_ID.

examples:
  ftops train configs/demo.yaml
  ftops train configs/demo.yaml max_steps=20 lora.r=8 packing=true
  ftops train configs/demo.yaml resume=0123456789abcdef0123456789abcdef""",
    )
    p.add_argument("config", help="job YAML (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a config key, e.g. lora.r=8")
    p.add_argument("--json", action="store_true", help='print {"run_id": ...} as JSON')
    p.set_defaults(func=_train)

    e = sub.add_parser(
        "export",
        help="write a run's base + adapter merged, for runtimes without LoRA",
        description="Merge the run's adapter into its base model (merge_and_unload) and save a plain safetensors "
        "model folder with a sha256 manifest.",
    )
    e.add_argument("run_id", metavar="RUN_ID")
    e.add_argument("--merged", required=True, metavar="OUT", help="output folder (new or empty)")
    e.set_defaults(func=_export)


def _train(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    run_id = train(config)
    print(json.dumps({"run_id": run_id}) if args.json else run_id)
    return 0


def _export(args: argparse.Namespace) -> int:
    out = export_merged(args.run_id, Path(args.merged))
    print(f"merged model written to {out}")
    return 0
