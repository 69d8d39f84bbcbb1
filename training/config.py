"""The training job's one typed config: loaded from YAML, overridden with ``key=value`` (dotted keys for nesting),
checked before anything heavy runs, and logged as the run's params."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from ftops.config import StrictConfig, merge, parse_overrides, read_yaml, validate
from ftops.errors import UsageError
from ftops.names import check_name
from ftops.precision import Precision, resolve

HINT = "keys and defaults are documented in training/config.py"
#: the ``ftops.*`` run tags a job config may set (all others are lineage that training sets)
USER_TAGS = frozenset({"ftops.model_name", "ftops.job_id"})


class DataConfig(StrictConfig):
    train: Path
    """Training split: chat JSONL (one ``{"messages": [...]}`` per line), or any format ``ftops data validate``
    accepts."""
    validation: Path
    """Validation split: evaluated every ``eval_steps`` (validation loss and token accuracy)."""
    test: Path
    """Held-out split: not trained on; logged as ``data/test.jsonl`` for ``ftops eval``."""
    replay: Path | None = None
    """Optional general-skill examples mixed into the training split (rehearsal against forgetting): ``ftops data
    replay --out FILE`` writes the base's own answers to general prompts. Logged as ``data/replay.jsonl``."""


class LoraConfig(StrictConfig):
    r: int = Field(16, ge=1, le=512)
    """LoRA rank."""
    alpha: int = Field(32, ge=1)
    """LoRA alpha (the update is scaled by alpha / r)."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the LoRA input."""
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Names of the linear modules to adapt (each must exist in the base model), e.g. q_proj, v_proj, gate_proj."""

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_commas(cls, v: Any) -> Any:
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    @field_validator("target_modules")
    @classmethod
    def _not_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one module name, e.g. [q_proj, v_proj]")
        return v


class TrainConfig(StrictConfig):
    """One training job. Every field can be overridden on the command line: ``ftops train CONFIG.yaml lora.r=8``."""

    base: str
    """Name of an imported base model (``ftops base list``)."""
    data: DataConfig
    """The three splits (``ftops data split`` writes them)."""
    method: Literal["qlora", "lora", "full"] = "qlora"
    """``qlora``: NF4 4-bit base with double quantization, LoRA on top; ``lora``: the base in the compute dtype + LoRA;
    ``full``: every weight trained (no adapter; logs the full model)."""
    precision: Precision = "auto"
    """Compute dtype: ``auto`` is bf16 on a GPU or a CPU with native bf16 (AVX512_BF16, AMX, Arm BF16) and fp32 on
    other CPUs, which would emulate bf16 at a fraction of fp32's speed (BENCHMARKS.md); ``bf16`` or ``fp32`` forces
    one. The resolved value is the run's ``ftops.quantization`` tag."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    """LoRA settings (ignored for ``method: full``)."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training split (ignored when ``max_steps`` is set)."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps; overrides ``epochs``."""
    learning_rate: float = Field(2e-4, gt=0)
    """Peak learning rate."""
    lr_scheduler: Literal[
        "linear",
        "cosine",
        "constant",
        "constant_with_warmup",
        "cosine_with_restarts",
        "polynomial",
        "inverse_sqrt",
        "warmup_stable_decay",
    ] = "cosine"
    """Learning-rate schedule (transformers' ``lr_scheduler_type``)."""
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of the steps spent warming the learning rate up."""
    batch_size: int = Field(8, ge=1)
    """Sequences per device per step."""
    gradient_accumulation: int = Field(1, ge=1)
    """Steps accumulated per optimizer step (effective batch = batch_size x accumulation x devices)."""
    max_seq_length: int = Field(512, ge=16)
    """Longer examples are truncated; with packing, the length of each packed row."""
    packing: bool = False
    """Pack whole examples into rows of up to ``max_seq_length`` tokens (TRL best-fit packing; attention stays within
    each example); ``batch_size`` then counts rows. Pays when example lengths vary (see training/packing.py)."""
    assistant_only_loss: bool = True
    """Train on the assistant's tokens only; system and user tokens are masked out of the loss."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: less memory, more compute."""
    keep_host_memory: bool = True
    """Keep the host memory a step frees for the next step instead of handing it back to the OS and faulting it in
    again (glibc's ``mallopt``: no ``mmap``'d blocks, no heap trimming; Linux with glibc only). On this project's
    2-core CPU host, beside an idle ``ftops serve`` (as the fine-tuning API's jobs run), it gave 1.16x the tokens/s
    and half the kernel time; alone, the same tokens/s (bench/bench_host_memory.py). Peak host memory is about 10%
    higher and stays reserved until the run ends. ``false`` keeps glibc's defaults."""
    eval_steps: int = Field(50, ge=1)
    """Evaluate on the validation split every this many steps (and at the end)."""
    save_steps: int = Field(50, ge=1)
    """Write a checkpoint (for resume) every this many steps."""
    logging_steps: int = Field(5, ge=1)
    """Log train loss, learning rate and tokens/s every this many steps."""
    seed: int = 0
    """Seed for the initialisation of LoRA weights, shuffling and dropout."""
    run_name: str | None = None
    """MLflow run name (default: ``<base>-<method>``)."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Extra MLflow tags on the run, e.g. ``{ftops.model_name: support-tickets}`` (the gate's default registered
    name) or the fine-tuning API's ``ftops.job_id``. Names starting with ``ftops.`` other than those two are
    reserved for lineage."""
    output: Path | None = None
    """Also copy the final adapter (or full model) to this folder."""
    resume: str | None = None
    """MLflow run id of a killed job: continue from its last checkpoint, into the same run."""
    progress: bool = True
    """Show a progress bar with loss and tokens/s."""

    @field_validator("base")
    @classmethod
    def _base_name(cls, v: str) -> str:
        try:
            return check_name(v, "base model name")
        except UsageError as e:
            raise ValueError(str(e)) from None

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        reserved = [k for k in v if k.startswith("ftops.") and k not in USER_TAGS]
        if reserved:
            raise ValueError(f"{reserved} are lineage tags ftops sets; ftops.* tags allowed: {sorted(USER_TAGS)}")
        return v

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("resume")
    @classmethod
    def _resume(cls, v: str | None) -> str | None:
        if v is not None and not v.isalnum():
            raise ValueError(f"{v!r} is not an MLflow run id (letters and digits, as `ftops train` printed it)")
        return v or None

    @property
    def quantization(self) -> str:
        """The lineage tag value: ``nf4-double-quant-<dtype>`` for QLoRA, the compute dtype otherwise (``bf16`` or
        ``fp32``, :func:`ftops.precision.resolve`)."""
        dtype = resolve(self.precision)
        return f"nf4-double-quant-{dtype}" if self.method == "qlora" else dtype

    def to_params(self) -> dict[str, str]:
        """The resolved config flattened to MLflow params (``lora.r`` ...); ``resume`` is left out so that a resumed
        run logs the same params as the run it continues."""
        flat: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}{k}.", v)
            else:
                flat[prefix[:-1]] = ",".join(value) if isinstance(value, list) else str(value)

        walk("", self.model_dump(mode="json", exclude={"resume", "progress"}))
        return flat


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a job YAML, apply ``key=value`` overrides, and validate. Raises :class:`FtopsError` naming the file and
    every bad key for a bad YAML (exit 1), :class:`UsageError` for a bad override (exit 2)."""
    raw = read_yaml(path, "training config")
    validate(TrainConfig, raw, str(path), hint=HINT)
    return validate(TrainConfig, merge(raw, parse_overrides(overrides)), "override", error=UsageError, hint=HINT)
