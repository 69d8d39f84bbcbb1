"""Serving without an engine: the config, the `ftops serve` pre-flight on bad input, adapter resolution against
the real MLflow registry (temporary SQLite store), and the gateway's key check and stream rewriting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftops.errors import FtopsError, UsageError
from ftops.serving.config import load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "serve.yaml"
    p.write_text(text)
    return p


def test_config_defaults_and_example_file_load():
    config = load_config(REPO / "serving" / "serve.example.yaml")
    assert config.adapter_specs() == [("ticket-extractor", "production")]
    assert config.engine.max_model_len == 2048 and config.limits.max_concurrency == 64
    assert (REPO / "serving" / "serve.example.yaml").read_text().startswith("# ftops serve --config")


@pytest.mark.parametrize(
    "text, where",
    [
        ("adapters: [ticket-extractor]\n", "adapters"),
        ("adapters: [a@production, a@staging]\n", "adapters"),
        ("engine: {max_model_len: 0}\n", "engine.max_model_len"),
        ("limts: {}\n", "limts"),
        ("adapters: [../etc@production]\n", "adapters"),
        ("adapters: [a..b@production]\n", "adapters"),  # a registry name never holds '..' (ftops.names)
        (f"adapters: [{'m' * 129}@production]\n", "adapters"),  # nor more than 128 characters
        ("adapters: [a@]\n", "adapters"),
        ("adapters: [a@prod@staging]\n", "adapters"),
        ("adapters: ['a@prod uction']\n", "adapters"),
        ("- just a list\n", "mapping"),
        ("base: [unclosed\n", "not valid YAML"),
        ("engine: {cpu_reserved_cores: -1}\n", "engine.cpu_reserved_cores"),
        ("engine: {cpu_reserved_cores: some}\n", "engine.cpu_reserved_cores"),
    ],
)
def test_bad_config_is_one_clear_usage_error(tmp_path, text, where):
    with pytest.raises(UsageError) as e:
        load_config(write(tmp_path, text))
    assert where in str(e.value) and str(tmp_path) in str(e.value)


def test_cpu_env_reserves_no_core_on_a_small_host_and_the_callers_env_wins(tmp_path, monkeypatch):
    """vLLM reserves one of this machine's 2 cores for its scheduler; ``auto`` gives the engine both."""
    from ftops.serving.engine import cpu_env
    from ftops.vllm_settings import SMALL_HOST_CORES

    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    config = load_config(write(tmp_path, "engine: {kv_cache_gib: 2}\n"))
    small = len(os.sched_getaffinity(0)) <= SMALL_HOST_CORES
    assert cpu_env(config.engine) == {
        "VLLM_CPU_KVCACHE_SPACE": "2",
        **({"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"} if small else {}),
    }
    assert (
        cpu_env(load_config(write(tmp_path, "engine: {cpu_reserved_cores: 1}\n")).engine)[
            "VLLM_CPU_NUM_OF_RESERVED_CPU"
        ]
        == "1"
    )
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "3")
    assert cpu_env(config.engine)["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "3"


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "ftops.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_serve_cli_bad_input_exits_with_one_line(tmp_path, ftops_home):
    r = run_cli("serve", "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no such serving config" in r.stderr
    r = run_cli("serve", "--port", "70000")
    assert r.returncode == 2 and "not a TCP port" in r.stderr
    r = run_cli("serve", "--config", str(write(tmp_path, "base: no-such-base\n")))
    assert r.returncode == 1 and "is not imported" in r.stderr and "Traceback" not in r.stderr


def test_adapter_for_another_base_is_refused(tiny_base, smollm2, ftops_home, tmp_path):
    from mlflow import MlflowClient
    from test_serving import make_adapter, register_version

    from ftops.adapter import alias_version
    from ftops.serving.adapters import fetch_adapter

    version = register_version("wrong-base", make_adapter(tiny_base, tmp_path / "a", seed=3), tiny_base)
    MlflowClient().set_registered_model_alias("wrong-base", "production", version)
    assert alias_version("wrong-base", "production") == version
    assert alias_version("wrong-base", "staging") is None
    assert alias_version("never-registered", "production") is None
    ok = fetch_adapter("wrong-base", version, tiny_base)
    assert ok.served_name == f"wrong-base:{version}" and ok.lora_rank == 8
    with pytest.raises(FtopsError, match="trained on base sha256"):
        fetch_adapter("wrong-base", version, smollm2)
    # the CLI pre-flight says the same in one line, before any engine starts
    config = write(tmp_path, f"base: {smollm2.name}\nadapters: [wrong-base@production]\n")
    r = run_cli("serve", "--config", str(config))
    assert r.returncode == 1 and "trained on base sha256" in r.stderr and "Traceback" not in r.stderr


def test_discovery_follows_production_models_of_this_base_only(tiny_base, ftops_home, tmp_path):
    """``ftops serve`` with no config follows every registered model whose @production version adapts its base; a
    model at @staging only, one with no alias and one trained on other weights are not followed."""
    from conftest import make_adapter, register_version

    from ftops import settings
    from ftops.adapter import TAG_BASE_SHA256
    from ftops.cli.serve import preflight
    from ftops.serving.adapters import discover

    folder = make_adapter(tiny_base, tmp_path / "a", seed=5)
    client = settings.mlflow_client()
    for name, alias, tags in [
        ("on-base", "production", None),
        ("staging-only", "staging", None),
        ("no-alias", None, None),
        ("other-base", "production", {TAG_BASE_SHA256: "0" * 64}),
    ]:
        version = register_version(name, folder, tiny_base, tags)
        if alias:
            client.set_registered_model_alias(name, alias, version)
    assert discover("production", tiny_base) == ["on-base"]
    assert discover("staging", tiny_base) == ["staging-only"]
    assert discover("canary", tiny_base) == []
    # the alias moves to a version on other weights: no longer followed (the cache is per version, not per name)
    seen: dict = {}
    assert discover("production", tiny_base, seen) == ["on-base"]
    moved = register_version("on-base", folder, tiny_base, {TAG_BASE_SHA256: "1" * 64})
    client.set_registered_model_alias("on-base", "production", moved)
    assert discover("production", tiny_base, seen) == []

    assert load_config().discover_alias() == "production"  # no config: serve what was promoted
    assert load_config(overrides={"adapters": ["x@staging"]}).discover_alias() is None  # a list narrows
    assert load_config(overrides={"adapters": ["x@staging"], "discover": "production"}).discover_alias() == "production"
    assert load_config(overrides={"discover": None}).discover_alias() is None
    with pytest.raises(UsageError, match="discover"):
        load_config(write(tmp_path, "discover: 'prod; DROP TABLE'\n"))
    lines = preflight(
        load_config(overrides={"base": tiny_base.name, "adapters": ["staging-only@staging"], "discover": "staging"})
    )
    assert any("adapter staging-only@staging: version 1" in line for line in lines)
    assert not any("registered models at @staging" in line and "staging-only" in line for line in lines)


def test_tampered_adapter_is_refused(tiny_base, ftops_home, tmp_path):
    import mlflow
    from test_serving import make_adapter, register_version

    from ftops.serving.adapters import fetch_adapter

    folder = make_adapter(tiny_base, tmp_path / "a", seed=4)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 64}))  # no longer what the manifest says
    version = register_version("tampered", folder, tiny_base)
    with pytest.raises(FtopsError, match="sha256"):
        fetch_adapter("tampered", version, tiny_base)
    assert mlflow.get_tracking_uri().startswith("sqlite:")


def test_key_check_is_exact():
    from ftops.api_keys import match_key

    keys = {"default": "k" * 20, "team": "t" * 20}
    assert match_key("t" * 20, keys) == "team"
    assert match_key("t" * 19, keys) is None
    assert match_key(None, keys) is None and match_key("", keys) is None


def test_stream_rewrite_keeps_usage_for_the_ledger_and_hides_it_from_the_client():
    from ftops.serving.recording import Outcome
    from ftops.serving.streaming import rewrite_event as _rewrite_event

    outcome = Outcome()
    chunk = {
        "choices": [{"index": 0, "delta": {"content": "hi"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1},
    }
    out = _rewrite_event(b"data: " + json.dumps(chunk).encode() + b"\n\n", outcome, False, False, 0.0)
    assert "usage" not in json.loads(out[6:]) and outcome.completion_tokens == 1 and outcome.first_token_at
    final = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
    assert _rewrite_event(b"data: " + json.dumps(final).encode() + b"\n\n", outcome, False, False, 0.0) == b""
    assert outcome.completion_tokens == 2 and not outcome.done
    _rewrite_event(b"data: [DONE]\n\n", outcome, False, False, 0.0)
    assert outcome.done
