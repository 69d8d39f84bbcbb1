"""``ftops serve``: the short form of ``bentoml serve ftops.serving.service:FtopsLLM`` with a pre-flight check."""

from __future__ import annotations

import argparse
import os
import sys

from ftops.env import FTOPS_HOME

#: the BentoML service inference alone runs as; the top composes a larger one (``ftops.cli.service``)
SERVICE = "ftops.serving.service:FtopsLLM"


def register(sub: argparse._SubParsersAction, service: str = SERVICE) -> None:
    """Add ``ftops serve``; it runs the BentoML service ``service`` (``module:Name``)."""
    p = sub.add_parser(
        "serve",
        help="serve the base model and the registry's adapters over an OpenAI-compatible API",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Start the BentoML + vLLM service: the base model and its LoRA adapters from the MLflow registry, each checked
(gate verdict pass, not revoked, this base) and sha256-verified before it loads. Without a config: every registered
model whose @production version was trained on the base, including models promoted after the start. A config's
`adapters: [NAME@ALIAS, ...]` serves exactly those instead (`discover: production` adds the others back).
`model: NAME` follows the alias (moves within seconds, no restart), `model: NAME:VERSION` pins a version.
Every /v1 route needs an API key (FTOPS_API_KEY or the config's api_keys_file); one is generated and printed
when none is set.

examples:
  ftops serve                                  # the base + everything at @production on it
  ftops serve --config configs/serve.yaml
  FTOPS_API_KEY=sk-local-123456789 ftops serve --port 8000""",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=3000, help="port (default 3000)")
    p.add_argument("--config", help="serving config YAML (serving/config.py; default: $FTOPS_SERVE_CONFIG)")
    p.set_defaults(func=_serve, service=service)


def preflight(config) -> list[str]:
    """Check the base and every adapter the config names before the engine starts; returns lines to print."""
    from ftops import settings
    from ftops.adapter import alias_version
    from ftops.base import load_base
    from ftops.costs.tables import load_hardware, load_prices
    from ftops.errors import FtopsError
    from ftops.serving.adapters import discover, fetch_adapter

    # A broken price table stops the service here, before any engine starts (the ledger prices every request).
    prices, hardware = load_prices(), load_hardware()
    settings.configure_mlflow()
    base = load_base(config.base)
    lines = [
        f"base {base.name} ({base.sha256[:12]}) at {base.path}",
        f"cost ledger: {len(prices.models)} hosted prices, hardware profile {hardware.default}",
    ]
    for name, alias in config.adapter_specs():
        version = alias_version(name, alias)
        if version is None:
            if config.require_adapters:
                raise FtopsError(
                    f"registered model {name!r} has no alias {alias!r}; promote a version first "
                    f"(ftops promote {name} --to {alias})"
                )
            lines.append(f"adapter {name}@{alias}: not set yet; served as soon as the alias exists")
            continue
        adapter = fetch_adapter(name, version, base)
        lines.append(f"adapter {name}@{alias}: version {version}, LoRA r={adapter.lora_rank}, verified")
    if (alias := config.discover_alias()) is not None:
        found = [n for n in discover(alias, base) if n not in dict(config.adapter_specs())]
        lines.append(
            f"registered models at @{alias} on {base.name}: {', '.join(found) or 'none yet'} "
            "(each is checked as it loads; models promoted later are served without a restart)"
        )
    return lines


def _serve(args: argparse.Namespace) -> int:
    import secrets
    import shutil

    from ftops import settings
    from ftops.api_keys import ADMIN_KEY_ID, load_keys
    from ftops.errors import UsageError
    from ftops.serving.config import API_KEY_ENV, CONFIG_ENV, load_config
    from ftops.serving.engine import cpu_env

    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: not a TCP port (1-65535)")
    config = load_config(args.config)
    for line in preflight(config):
        print(line, flush=True)
    env = dict(os.environ)
    if args.config:
        env[CONFIG_ENV] = os.path.abspath(args.config)
    if set(load_keys(config.api_keys_file)) <= {ADMIN_KEY_ID}:  # no key a client uses: one for this run
        env[API_KEY_ENV] = "ftops-" + secrets.token_urlsafe(24)
        print(f"no API key configured: generated {API_KEY_ENV}={env[API_KEY_ENV]} for this run", flush=True)
    env.setdefault("BENTOML_HOME", str(settings.home() / "bentoml"))
    env[FTOPS_HOME.name] = str(settings.home())
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.update(cpu_env(config.engine))
    bentoml = shutil.which("bentoml", path=os.path.dirname(sys.executable)) or "bentoml"
    argv = [bentoml, "serve", args.service, "--host", args.host, "--port", str(args.port)]
    print(f"serving on http://{args.host}:{args.port}/v1 (OpenAI-compatible; /readyz once loaded)", flush=True)
    os.execve(bentoml, argv, env)
    return 0  # not reached
