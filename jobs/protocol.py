"""The fine-tuning API's wire shapes: OpenAI's request bodies, its answers and its error, nothing that routes.

The answers are the objects the installed ``openai`` client parses (``openai.types.FileObject``,
``openai.types.fine_tuning.FineTuningJob``, ``FineTuningJobEvent``, ``FineTuningJobCheckpoint``), built from the
store's rows; every error is :class:`ApiError`, sent in the one body of ``ftops.http``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ftops.http import error_payload

ORGANIZATION = "org-ftops"
_SUFFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


# --------------------------------------------------------------------------------------------- errors
class ApiError(Exception):
    """An error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type

    def response(self) -> JSONResponse:
        return JSONResponse(error_payload(self.message, self.type, self.code, self.param), status_code=self.status)


def validation_error(e: ValidationError | RequestValidationError) -> ApiError:
    """A bad body or parameter as OpenAI answers it: 400, naming the first bad field (never FastAPI's 422)."""
    first = e.errors()[0]
    loc = [str(p) for p in first["loc"] if p != "body"]
    param = ".".join(loc) or None
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = f"Unknown parameter: {param!r}."
    elif first["type"] == "missing":
        msg = f"Missing required parameter: {param!r}."
    return ApiError(400, f"{param}: {msg}" if param and param not in msg else msg, "invalid_value", param)


# :class:`ApiError` on the wire, for the OpenAPI document (no docstrings: they would become its descriptions)
class ApiErrorObject(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ApiErrorBody(BaseModel):
    error: ApiErrorObject


# --------------------------------------------------------------------------------------------- requests
Auto = Literal["auto"]


class Hyperparameters(BaseModel):
    """OpenAI's supervised hyperparameters; each a number or ``"auto"`` (the service's training config)."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Auto = Field("auto")
    batch_size: int | Auto = Field("auto")
    learning_rate_multiplier: float | Auto = Field("auto")

    @field_validator("n_epochs")
    @classmethod
    def _epochs(cls, v):
        if v != "auto" and not 1 <= v <= 50:
            raise ValueError("n_epochs must be between 1 and 50, or 'auto'")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v):
        if v != "auto" and not 1 <= v <= 256:
            raise ValueError("batch_size must be between 1 and 256, or 'auto'")
        return v

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _lr(cls, v):
        if v != "auto" and not 0 < v <= 10:
            raise ValueError("learning_rate_multiplier must be > 0 and <= 10, or 'auto'")
        return v


class Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised"]
    supervised: Supervised | None = None


class JobRequest(BaseModel):
    """``POST /v1/fine_tuning/jobs``; unknown fields are refused with their name."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    training_file: str = Field(min_length=1, max_length=100)
    validation_file: str | None = Field(None, max_length=100)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: str | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v):
        if v is not None and not _SUFFIX.match(v):
            raise ValueError("suffix: up to 40 characters of a-z, 0-9 and '-', starting with a letter or digit")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v):
        if v is not None and (len(v) > 16 or any(len(k) > 64 or len(x) > 512 for k, x in v.items())):
            raise ValueError("metadata: at most 16 keys of <= 64 characters, values of <= 512 characters")
        return v

    @field_validator("integrations")
    @classmethod
    def _integrations(cls, v):
        if v:
            raise ValueError("integrations are not supported; metrics go to MLflow")
        return v

    def resolved_hyperparameters(self) -> dict:
        hp = self.method.supervised.hyperparameters if self.method and self.method.supervised else None
        return (hp or self.hyperparameters or Hyperparameters()).model_dump()

    def record(self) -> dict:
        """What the store keeps of the request (the job's ``request``): hyperparameters resolved, seed 42 if none."""
        return {
            "model": self.model,
            "training_file": self.training_file,
            "validation_file": self.validation_file,
            "hyperparameters": self.resolved_hyperparameters(),
            "suffix": self.suffix,
            "seed": self.seed if self.seed is not None else 42,
            "metadata": self.metadata,
        }


# --------------------------------------------------------------------------------------------- responses
def file_object(row: dict) -> dict:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def file_deleted(file_id: str) -> dict:
    return {"id": file_id, "object": "file", "deleted": True}


def job_object(row: dict) -> dict:
    request = row["request"]
    hp = request["hyperparameters"]
    return {
        "id": row["id"],
        "object": "fine_tuning.job",
        "created_at": row["created_at"],
        "error": row["error"],
        "fine_tuned_model": row["fine_tuned_model"],
        "finished_at": row["finished_at"],
        "hyperparameters": hp,
        "model": request["model"],
        "organization_id": ORGANIZATION,
        "result_files": [],
        "seed": request["seed"],
        "status": row["status"],
        "trained_tokens": row["trained_tokens"],
        "training_file": request["training_file"],
        "validation_file": request.get("validation_file"),
        "estimated_finish": row["estimated_finish"],
        "integrations": None,
        "metadata": request.get("metadata"),
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
        "suffix": request.get("suffix"),
    }


def event_object(row: dict) -> dict:
    return {
        "id": row["id"],
        "object": "fine_tuning.job.event",
        "created_at": row["created_at"],
        "level": row["level"],
        "message": row["message"],
        "data": row["data"],
        "type": row["type"],
    }


def checkpoint_object(row: dict) -> dict:
    return {
        "id": row["id"],
        "object": "fine_tuning.job.checkpoint",
        "created_at": row["created_at"],
        "fine_tuned_model_checkpoint": row["name"],
        "fine_tuning_job_id": row["job_id"],
        "metrics": row["metrics"],
        "step_number": row["step_number"],
    }


def page(data: list[dict], has_more: bool) -> dict:
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
