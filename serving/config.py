"""The serving config: which base, which registered adapters at which alias, engine settings, limits.

Loaded from YAML (``ftops serve --config FILE`` or ``$FTOPS_SERVE_CONFIG``); every field has a default, so no file
at all means "SmolLM2 with nothing registered yet". The bentoml worker reads the same file through
``$FTOPS_SERVE_CONFIG``, so ``ftops serve`` and ``bentoml serve ftops.serving.service:FtopsLLM`` serve the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ftops.config import StrictConfig, read_yaml, validate
from ftops.env import FTOPS_ADMIN_KEY, FTOPS_API_KEY, FTOPS_SERVE_CONFIG
from ftops.errors import UsageError
from ftops.names import is_alias, is_name
from ftops.vllm_settings import KV_CACHE_GIB, MAX_MODEL_LEN, engine_dtype

CONFIG_ENV = FTOPS_SERVE_CONFIG.name
API_KEY_ENV = FTOPS_API_KEY.name
ADMIN_KEY_ENV = FTOPS_ADMIN_KEY.name


class EngineConfig(BaseModel):
    """vLLM engine settings (the same code runs the ``vllm`` package on a GPU host)."""

    model_config = ConfigDict(extra="forbid")

    max_model_len: int = Field(MAX_MODEL_LEN, ge=16)
    """Context length the engine serves; requests beyond it answer 400."""
    max_lora_rank: int = Field(16, ge=1)
    """Largest LoRA rank an adapter may have."""
    max_loras: int = Field(2, ge=1)
    """Adapters active in one batch (an alias move briefly has the old and new version side by side)."""
    max_cpu_loras: int = Field(8, ge=1)
    """Adapters kept loaded (current versions, pinned versions, the one before a move)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(default_factory=engine_dtype)
    """Weights and activations dtype. Default: ``bfloat16`` on a GPU or a CPU with native bf16 (AVX512_BF16, AMX,
    Arm BF16), ``float32`` on other CPUs, which emulate bf16 slowly (``ftops.vllm_settings.engine_dtype``; the gate
    evaluates in the same). ``auto`` is vLLM's: the checkpoint's own dtype."""
    kv_cache_gib: int = Field(KV_CACHE_GIB, ge=1)
    """CPU KV cache size in GiB (``VLLM_CPU_KVCACHE_SPACE``); on a GPU host ``gpu_memory_utilization`` applies."""
    cpu_reserved_cores: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    """CPU hosts: cores vLLM keeps free of its compute threads for its scheduler and the HTTP front
    (``VLLM_CPU_NUM_OF_RESERVED_CPU``). ``auto``: none on hosts with at most 4 cores (on 2 cores vLLM's default of one
    halves the compute; reserving none measured 1.25-1.5x the throughput, BENCHMARKS.md), vLLM's default above."""
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    """Share of device (or, on CPU, host) memory vLLM may reserve."""
    max_num_seqs: int = Field(64, ge=1)
    """Sequences the scheduler batches at once."""
    extra_args: list[str] = Field(default_factory=list)
    """More vLLM engine CLI arguments, e.g. ``["--enforce-eager"]``."""
    pause_while_training: bool = True
    """While a fine-tuning job of this service's local executor trains on this host and no request needs the engine
    (none in flight for 2 s, no adapter loading), stop the engine's processes; the next request or adapter load
    continues them first (a signal: no reload, no delay worth measuring). An idle vLLM engine still wakes ~1,300
    times a second and cost a job beside it up to ~7% of its tokens/s on 2 cores (BENCHMARKS.md). ``/readyz`` shows
    ``engine.paused``. Jobs on Kubernetes run elsewhere and pause nothing."""


class LimitsConfig(BaseModel):
    """Request limits enforced before anything reaches the engine."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(1_000_000, ge=1024)
    """Largest request body; more answers 413."""
    max_concurrency: int = Field(64, ge=1)
    """Requests in flight at once; more answers 429 with Retry-After."""
    retry_after_s: int = Field(1, ge=1)
    """The Retry-After a 429 carries."""


class RetryConfig(StrictConfig):
    """How the service retries what failed for a passing reason (MLflow, network, disk, a database not up yet).
    Permanent refusals (not gated, revoked, digest mismatch, another base) are never retried."""

    initial_s: float = Field(1.0, gt=0, le=60)
    """Wait before the first retry; each further failure of the same thing doubles it, up to ``max_s``."""
    max_s: float = Field(30.0, gt=0, le=3600)
    """Longest wait between two retries."""
    start_attempts: int = Field(5, ge=1)
    """Failed starts (ledger, engine, required adapters) after which ``/livez`` answers 503, so that the
    orchestrator restarts the process; the service keeps retrying meanwhile and ``/livez`` recovers if one succeeds."""

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row of one thing."""
        return min(self.initial_s * 2 ** max(failures - 1, 0), self.max_s)


class ServeConfig(BaseModel):
    """What ``ftops serve`` serves. Loaded from YAML; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")

    base: str = "smollm2-135m-instruct"
    """Imported base model name (``ftops base list``); adapters must have been trained on exactly these weights."""
    adapters: list[str] = Field(default_factory=list)
    """Registered models to serve, as ``NAME@ALIAS`` (e.g. ``ticket-extractor@production``); ``model: NAME`` follows
    the alias, ``model: NAME:VERSION`` pins a version."""
    discover: str | None = "auto"
    """Also serve every registered model whose ``@ALIAS`` version was trained on ``base`` (the version's base sha256
    tag), looked up at start and on every poll, so that models registered or promoted later are served without a
    restart. ``auto``: ``production`` when ``adapters`` is empty (``ftops serve`` with no config serves what was
    promoted), off when it lists models (the list is what is served); ``null``: off; an alias name (e.g.
    ``production``): on, beside ``adapters``."""
    poll_interval_s: float = Field(2.0, gt=0, le=60)
    """How often the registry is polled for alias moves."""
    require_adapters: bool = False
    """Refuse to start when an alias does not exist yet (otherwise the service starts and picks it up once set)."""
    api_keys_file: str | None = None
    """YAML mapping ``key id -> key``; ``$FTOPS_API_KEY`` is the key id ``default`` and ``$FTOPS_ADMIN_KEY`` ``admin``
    (:func:`ftops.api_keys.load_keys`)."""
    ledger_url: str | None = None
    """Cost ledger database URL; None: ``$FTOPS_LEDGER_URL``, else SQLite under ``$FTOPS_HOME``."""
    metrics_port: int | None = Field(None, ge=1, le=65535)
    """Also answer ``GET /metrics`` (ftops's request, token and ledger series, vLLM's engine series) on this port,
    without an API key, for Prometheus; nothing else is served there. None: only the API port's ``/metrics``, which
    needs a key like every route but health."""
    metrics_host: str = "127.0.0.1"
    """Interface of ``metrics_port`` (``0.0.0.0`` in a pod, for the scraper)."""
    engine: EngineConfig = Field(default_factory=EngineConfig)
    """vLLM engine settings."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    """Request limits."""
    jobs: dict[str, Any] = Field(default_factory=dict)
    """The fine-tuning API served beside inference (``/v1/files``, ``/v1/fine_tuning/jobs``): its settings are the
    training stage's ``JobsConfig`` (jobs/service.py), checked when the service is composed."""
    retry: RetryConfig = Field(default_factory=RetryConfig)
    """Retries of transient failures (start, registry reads, adapter downloads)."""
    drain_timeout_s: int = Field(600, ge=1, le=86400)
    """On SIGTERM, the longest wait for the requests in flight (streams included) to end and get their ledger rows;
    meanwhile new requests get 503 with ``Retry-After`` and ``/readyz`` answers 503. The process exits as soon as
    they are done; what still runs at the deadline is cancelled (a ``cancelled`` row). The default is BentoML's traffic
    timeout (600 s): the orchestrator's grace period must be longer (k8s: ``terminationGracePeriodSeconds`` 660)."""

    @field_validator("adapters")
    @classmethod
    def _adapter_specs(cls, value: list[str]) -> list[str]:
        for spec in value:
            name, at, alias = spec.partition("@")
            if not (at and is_name(name) and is_alias(alias)):
                raise ValueError(f"{spec!r} is not NAME@ALIAS (e.g. ticket-extractor@production)")
        names = [s.split("@")[0] for s in value]
        if len(set(names)) != len(names):
            raise ValueError("each registered model may appear once")
        return value

    @field_validator("discover")
    @classmethod
    def _discover_alias(cls, value: str | None) -> str | None:
        if value is not None and not is_alias(value):
            raise ValueError(f"{value!r} is not an alias name (letters, digits, _ and -), 'auto' or null")
        return value

    def discover_alias(self) -> str | None:
        """The alias whose models are discovered (``discover`` with ``auto`` resolved); None: no discovery."""
        if self.discover == "auto":
            return None if self.adapters else "production"
        return self.discover

    def adapter_specs(self) -> list[tuple[str, str]]:
        """``[(name, alias), ...]``."""
        return [tuple(s.split("@", 1)) for s in self.adapters]  # type: ignore[misc]


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> ServeConfig:
    """Read ``path`` (or ``$FTOPS_SERVE_CONFIG``; none: defaults) and apply ``overrides``; one clear error if bad."""
    path = path or FTOPS_SERVE_CONFIG.get()
    data = read_yaml(path, "serving config", error=UsageError) if path else {}
    return validate(ServeConfig, {**data, **(overrides or {})}, str(path or "serving config"), error=UsageError)
