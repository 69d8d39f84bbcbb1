"""The two price tables and how they are read: hosted per-token prices (``prices.yaml``) and the hourly prices of the
hardware a replica runs on (``hardware.yaml``). Each is validated on load; a bad table is refused naming the file and
the field."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ftops.config import read_yaml, validate
from ftops.env import FTOPS_HARDWARE, FTOPS_HARDWARE_PROFILE, FTOPS_PRICES, FTOPS_REPLICA
from ftops.errors import FtopsError

HERE = Path(__file__).resolve().parent
PRICES_PATH = HERE / "prices.yaml"
HARDWARE_PATH = HERE / "hardware.yaml"
HOURS_PER_MONTH = 730
MTOK = 1_000_000
HARDWARE_PROFILE_ENV = FTOPS_HARDWARE_PROFILE.name
REPLICA_ENV = FTOPS_REPLICA.name


# --------------------------------------------------------------------------------------------- price tables
class ModelPrice(BaseModel):
    """One hosted model's per-token prices."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(min_length=1)
    """Who sells it: ``openai``, ``together``."""
    model: str = Field(min_length=1)
    """The provider's model name, e.g. ``gpt-4o-mini`` or ``ft:gpt-4o-mini``."""
    fine_tuned: bool
    """True for the price of serving a model fine-tuned on the provider."""
    input_usd_per_mtok: float = Field(ge=0)
    """USD per million prompt (input) tokens."""
    output_usd_per_mtok: float = Field(ge=0)
    """USD per million completion (output) tokens."""
    training_usd_per_mtok: float | None = Field(default=None, ge=0)
    """USD per million trained tokens (tokens x epochs) for fine-tuning this model; null if not offered."""
    as_of: date
    """The day this price was read from ``source``."""
    source: str = Field(min_length=1)
    """Where the price was read (URL)."""
    new_jobs_until: date | None = None
    """Fine-tuned rows: the last day the provider accepts new fine-tuning jobs; null when no end is announced."""
    available_until: date | None = None
    """The last day the model answers requests (a fine-tuned model ends with its base); null when not announced."""
    availability_source: str | None = None
    """Where the availability dates were read (URL) and on which day; required with either date."""

    @model_validator(mode="after")
    def _dates_have_a_source(self) -> ModelPrice:
        if (self.new_jobs_until or self.available_until) and not self.availability_source:
            raise ValueError("availability dates need availability_source (where and when they were read)")
        return self


class PriceTable(BaseModel):
    """``costs/prices.yaml``: hosted per-token prices, keyed ``provider/model``."""

    model_config = ConfigDict(extra="forbid")

    as_of: date
    """When the table as a whole was last checked."""
    currency: Literal["USD"]
    """Every price is in US dollars."""
    models: dict[str, ModelPrice] = Field(min_length=1)
    """Keyed ``provider/model`` (the key is what reports and metrics show)."""

    def hosted_cost(self, prompt_tokens: int, completion_tokens: int) -> dict[str, float]:
        """``{key: prompt x input + completion x output}`` in USD for every model of the table."""
        return {
            key: (prompt_tokens * p.input_usd_per_mtok + completion_tokens * p.output_usd_per_mtok) / MTOK
            for key, p in self.models.items()
        }


class Instance(BaseModel):
    """One replica type and its on-demand hourly price."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(min_length=1)
    """What it is: vCPUs, memory, accelerators."""
    usd_per_hour: float = Field(gt=0)
    """On-demand USD per hour for one replica."""
    as_of: date
    """The day this price was read from ``source``."""
    source: str = Field(min_length=1)
    """Where the price was read (URL)."""


class HardwareTable(BaseModel):
    """``costs/hardware.yaml``: hourly prices of replica types."""

    model_config = ConfigDict(extra="forbid")

    as_of: date
    """When the table as a whole was last checked."""
    currency: Literal["USD"]
    """Every price is in US dollars."""
    default: str
    """The instance a replica runs on unless ``$FTOPS_HARDWARE_PROFILE`` (or ``--hardware-profile``) names another."""
    instances: dict[str, Instance] = Field(min_length=1)
    """Keyed by a short name, e.g. ``aws-g5.xlarge``."""

    @model_validator(mode="after")
    def _default_exists(self) -> HardwareTable:
        if self.default not in self.instances:
            raise ValueError(f"default {self.default!r} is not one of the instances ({', '.join(self.instances)})")
        return self

    def instance(self, name: str) -> Instance:
        if name not in self.instances:
            raise FtopsError(
                f"unknown hardware profile {name!r}: hardware.yaml lists {', '.join(sorted(self.instances))}"
            )
        return self.instances[name]


def _load_yaml_table(path: Path, model: type[BaseModel], what: str) -> Any:
    return validate(model, read_yaml(path, what, mapping=False), str(path), hint=f"fix the {what} and restart")


def load_prices(path: str | Path | None = None) -> PriceTable:
    """Load and validate the hosted price table: ``path``, ``$FTOPS_PRICES`` or ``costs/prices.yaml``.

    Raises :class:`FtopsError` naming the file and the field (missing field, negative price, bad date...)."""
    return _load_yaml_table(Path(path or FTOPS_PRICES.get() or PRICES_PATH), PriceTable, "hosted price table")


def load_hardware(path: str | Path | None = None) -> HardwareTable:
    """Load and validate the replica price table: ``path``, ``$FTOPS_HARDWARE`` or ``costs/hardware.yaml``. Its
    ``default`` becomes ``$FTOPS_HARDWARE_PROFILE`` when that is set (the instance this machine runs on)."""
    table = _load_yaml_table(Path(path or FTOPS_HARDWARE.get() or HARDWARE_PATH), HardwareTable, "hardware price table")
    check_replica_env(table)
    if profile := FTOPS_HARDWARE_PROFILE.get():
        if profile not in table.instances:
            raise FtopsError(
                f"{HARDWARE_PROFILE_ENV}={profile!r}: unknown hardware profile; hardware.yaml lists "
                f"{', '.join(sorted(table.instances))}"
            )
        table.default = profile
    return table


def check_replica_env(table: HardwareTable) -> None:
    """Refuse ``$FTOPS_REPLICA`` set to a hardware profile's name while ``$FTOPS_HARDWARE_PROFILE`` is unset: an older
    ftops read the hardware from ``FTOPS_REPLICA``, which now names the replica, so such a setting would price the
    replica at the table's default without a word."""
    value = FTOPS_REPLICA.get()
    if value and value in table.instances and not FTOPS_HARDWARE_PROFILE.is_set():
        raise FtopsError(
            f"{REPLICA_ENV}={value!r} names a hardware profile, but {REPLICA_ENV} now names the replica (this "
            f"server: its host or pod) and {HARDWARE_PROFILE_ENV} the hardware: set {HARDWARE_PROFILE_ENV}={value} "
            f"and unset {REPLICA_ENV} (or set it to this server's name)"
        )
