"""OpenAI's fine-tuning API, self-hosted: ``/v1/files`` and ``/v1/fine_tuning/jobs`` in OpenAI's shapes.

The shapes are those the installed ``openai`` client parses (``openai.types.FileObject``,
``openai.types.fine_tuning.FineTuningJob``, ``FineTuningJobEvent``, ``FineTuningJobCheckpoint``), so the guides'
code runs with only ``base_url``, ``api_key`` and the base model's name changed::

    file = client.files.create(file=open("tickets.jsonl", "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=file.id, model="smollm2-135m-instruct",
                                         hyperparameters={"n_epochs": 3})
    client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model      # NAME:VERSION, once the gate passed

This app belongs to the training stage; the service that mounts it beside inference is composed at the top
(``ftops.cli.service``), behind the same API keys. Files and jobs belong to the key that created them: another key
gets 404, the admin key sees all. Bad input gets OpenAI's error shape and status, never a 500.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ftops.api_keys import ADMIN_KEY_ID
from ftops.http import error_payload
from ftops.jobs.store import FINAL, JobStore

ORGANIZATION = "org-ftops"
_SUFFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


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


# --------------------------------------------------------------------------------------------- the app
@dataclass
class JobsApiSettings:
    """What the API enforces."""

    max_upload_bytes: int = 100_000_000
    """Largest upload; more answers 413."""
    bases: tuple[str, ...] = ()
    """Base model names a job may fine-tune (``ftops base list``); empty: every imported base."""


def _owner(request: Request) -> str | None:
    """The key id that authenticated the request (set by the service's API key middleware); None for the admin."""
    key_id = (request.scope.get("state") or {}).get("ftops_key_id")
    if not key_id:  # never served without the middleware in front
        raise ApiError(401, "You didn't provide an API key.", "invalid_api_key")
    return None if key_id == ADMIN_KEY_ID else key_id


def _limit(raw: str | None, default: int = 20) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise ApiError(400, f"limit must be a whole number from 1 to 100 (got {raw!r})", "invalid_value", "limit")
    return int(raw)


def _validation_error(e: ValidationError | RequestValidationError) -> ApiError:
    first = e.errors()[0]
    loc = [str(p) for p in first["loc"] if p != "body"]
    param = ".".join(loc) or None
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = f"Unknown parameter: {param!r}."
    elif first["type"] == "missing":
        msg = f"Missing required parameter: {param!r}."
    return ApiError(400, f"{param}: {msg}" if param and param not in msg else msg, "invalid_value", param)


def build_app(store: JobStore, settings: JobsApiSettings, known_bases) -> FastAPI:
    """The fine-tuning API over ``store``; ``known_bases()`` lists the imported base names."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(_request, e: ApiError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request, e: RequestValidationError):
        return _validation_error(e).response()

    @app.exception_handler(404)
    async def _not_found(request, _e):
        return ApiError(404, f"Unknown request URL: {request.method} {request.url.path}.", "unknown_url").response()

    @app.exception_handler(405)
    async def _method(request, _e):
        return ApiError(405, f"{request.method} {request.url.path} is not allowed.", "method_not_allowed").response()

    def own_file(file_id: str, owner: str | None) -> dict:
        row = store.get_file(file_id, owner)
        if row is None:
            raise ApiError(404, f"No such File object: {file_id}", "file_not_found", "file_id")
        return row

    def own_job(job_id: str, owner: str | None) -> dict:
        row = store.get_job(job_id, owner)
        if row is None:
            raise ApiError(404, f"No such fine-tuning job: {job_id}", "fine_tuning_job_not_found", "fine_tuning_job_id")
        return row

    # ----------------------------------------------------------------------------------------- files
    @app.post("/v1/files")
    async def create_file(request: Request):
        owner = _owner(request) or ADMIN_KEY_ID
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
            raise ApiError(
                413,
                f"The upload is {declared} bytes; the limit is {settings.max_upload_bytes}.",
                "file_too_large",
                "file",
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_upload_bytes:
                raise ApiError(
                    413, f"The upload is over the limit of {settings.max_upload_bytes} bytes.", "file_too_large", "file"
                )
        replay = Request(request.scope, receive=_replay(bytes(body)))
        try:
            form = await replay.form(max_files=1, max_fields=10)
        except Exception as e:  # python-multipart's errors for a broken body
            raise ApiError(400, f"The body is not multipart/form-data with a file ({e}).", "invalid_body") from None
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose != "fine-tune":
            raise ApiError(
                400, f"purpose {purpose!r}: this server stores files for 'fine-tune' only.", "invalid_value", "purpose"
            )
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "Missing required parameter: 'file'.", "missing_required_parameter", "file")
        data = await upload.read()
        filename = (upload.filename or "upload.jsonl").replace("/", "_")[-200:]
        _check_jsonl(data, filename)
        return file_object(store.add_file(owner, filename, purpose, data))

    @app.get("/v1/files")
    async def list_files(
        request: Request,
        purpose: str | None = None,
        after: str | None = None,
        limit: str | None = None,
        order: str = "desc",
    ):
        rows = store.list_files(_owner(request), purpose)
        if order == "asc":
            rows.reverse()
        if after:
            ids = [r["id"] for r in rows]
            rows = rows[ids.index(after) + 1 :] if after in ids else rows
        n = _limit(limit, 10_000) if limit else len(rows)
        return page([file_object(r) for r in rows[:n]], len(rows) > n)

    @app.get("/v1/files/{file_id}")
    async def get_file(request: Request, file_id: str):
        return file_object(own_file(file_id, _owner(request)))

    @app.get("/v1/files/{file_id}/content")
    async def file_content(request: Request, file_id: str):
        row = own_file(file_id, _owner(request))
        return Response(store.file_bytes(row), media_type="application/jsonl")

    @app.delete("/v1/files/{file_id}")
    async def delete_file(request: Request, file_id: str):
        row = own_file(file_id, _owner(request))
        in_use = [
            j["id"]
            for j in store.jobs_with_status("validating_files")
            if row["id"] in (j["request"]["training_file"], j["request"].get("validation_file"))
        ]
        if in_use:
            raise ApiError(
                400,
                f"File {file_id} is being validated for job {in_use[0]}; delete it afterwards.",
                "file_in_use",
                "file_id",
            )
        store.delete_file(row["id"])
        return {"id": row["id"], "object": "file", "deleted": True}

    # ----------------------------------------------------------------------------------------- jobs
    @app.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request):
        owner = _owner(request)
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "The body is not valid JSON.", "invalid_json") from None
        try:
            job = JobRequest.model_validate(body)
        except ValidationError as e:
            raise _validation_error(e) from None
        bases = [b for b in known_bases() if not settings.bases or b in settings.bases]
        if job.model not in bases:
            raise ApiError(
                404,
                f"The model {job.model!r} does not exist or is not a base this server fine-tunes "
                f"(bases: {', '.join(bases) or 'none imported'}).",
                "model_not_found",
                "model",
            )
        for param in ("training_file", "validation_file"):
            file_id = getattr(job, param)
            if file_id is None:
                continue
            row = store.get_file(file_id, owner)
            if row is None:
                raise ApiError(
                    404,
                    f"{param} {file_id!r}: no such file for this API key; upload it with purpose='fine-tune' first.",
                    "file_not_found",
                    param,
                )
            if row["purpose"] != "fine-tune":
                raise ApiError(
                    400, f"{param} {file_id!r} has purpose {row['purpose']!r}, not 'fine-tune'.", "invalid_value", param
                )
        request_record = {
            "model": job.model,
            "training_file": job.training_file,
            "validation_file": job.validation_file,
            "hyperparameters": job.resolved_hyperparameters(),
            "suffix": job.suffix,
            "seed": job.seed if job.seed is not None else 42,
            "metadata": job.metadata,
        }
        row = store.add_job(owner or ADMIN_KEY_ID, request_record)
        store.add_event(row["id"], f"Created fine-tuning job: {row['id']}")
        store.add_event(row["id"], f"Validating training file: {job.training_file}")
        return job_object(row)

    @app.get("/v1/fine_tuning/jobs")
    async def list_jobs(request: Request, after: str | None = None, limit: str | None = None):
        rows, more = store.list_jobs(_owner(request), after, _limit(limit))
        return page([job_object(r) for r in rows], more)

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def get_job(request: Request, job_id: str):
        return job_object(own_job(job_id, _owner(request)))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel_job(request: Request, job_id: str):
        row = own_job(job_id, _owner(request))
        if row["status"] in FINAL:
            raise ApiError(
                400,
                f"Job {job_id} has already {row['status']}; only a job that has not ended can be cancelled.",
                "invalid_state",
                "fine_tuning_job_id",
            )
        store.update_job(job_id, cancel_requested=True)
        if row["status"] in ("validating_files", "queued"):  # no process to stop: cancelled at once
            if store.update_job(job_id, only_if=("validating_files", "queued"), status="cancelled", finished_at=_now()):
                store.add_event(job_id, "The job was cancelled before it started")
        return job_object(store.get_job(job_id, None))

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def job_events(request: Request, job_id: str, after: str | None = None, limit: str | None = None):
        own_job(job_id, _owner(request))
        rows, more = store.events(job_id, after, _limit(limit))
        return page([event_object(r) for r in rows], more)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    async def job_checkpoints(request: Request, job_id: str, after: str | None = None, limit: str | None = None):
        own_job(job_id, _owner(request))
        rows, more = store.checkpoints(job_id, after, _limit(limit, 10))
        return page([checkpoint_object(r) for r in rows], more)

    return app


def _now() -> int:
    import time

    return int(time.time())


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _check_jsonl(data: bytes, filename: str) -> None:
    """A fine-tuning upload is JSON Lines: UTF-8 text whose first non-empty line is a JSON object. The full data
    contract runs when a job uses the file (``validating_files``), with every bad line named."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(
            400,
            f"{filename}: not UTF-8 text; upload a .jsonl file (one JSON object per line).",
            "invalid_file_format",
            "file",
        ) from None
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        raise ApiError(400, f"{filename}: the file is empty.", "invalid_file_format", "file")
    try:
        obj = json.loads(first)
    except ValueError:
        raise ApiError(
            400,
            f"{filename}: line 1 is not JSON; upload a .jsonl file (one JSON object per line).",
            "invalid_file_format",
            "file",
        ) from None
    if not isinstance(obj, dict):
        raise ApiError(400, f"{filename}: line 1 is not a JSON object.", "invalid_file_format", "file")


# --------------------------------------------------------------------------------------------- its OpenAPI part
def openapi_part(app: FastAPI) -> dict:
    """This app's part of the service's OpenAPI schema (the service merges it into ``/openapi.json``): its routes as
    FastAPI sees them, with the request bodies it reads itself (:class:`JobRequest`, the multipart upload), the
    answers in the ``openai`` client's own models, and every error in OpenAI's shape (:class:`ApiError`; FastAPI's
    422 is never sent: a bad parameter answers 400)."""
    from fastapi.openapi.utils import get_openapi
    from openai.types import FileDeleted, FileObject
    from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
    from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint
    from pydantic import create_model
    from pydantic.json_schema import models_json_schema

    class ApiErrorObject(BaseModel):
        message: str
        type: str
        param: str | None = None
        code: str | None = None

    class ApiErrorBody(BaseModel):
        error: ApiErrorObject

    def page_of(item: type[BaseModel]) -> type[BaseModel]:
        return create_model(
            f"{item.__name__}List",
            object=(Literal["list"], ...),
            data=(list[item], ...),
            has_more=(bool, ...),
            first_id=(str | None, None),
            last_id=(str | None, None),
        )

    answers = {
        ("/v1/files", "post"): FileObject,
        ("/v1/files", "get"): page_of(FileObject),
        ("/v1/files/{file_id}", "get"): FileObject,
        ("/v1/files/{file_id}", "delete"): FileDeleted,
        ("/v1/fine_tuning/jobs", "post"): FineTuningJob,
        ("/v1/fine_tuning/jobs", "get"): page_of(FineTuningJob),
        ("/v1/fine_tuning/jobs/{job_id}", "get"): FineTuningJob,
        ("/v1/fine_tuning/jobs/{job_id}/cancel", "post"): FineTuningJob,
        ("/v1/fine_tuning/jobs/{job_id}/events", "get"): page_of(FineTuningJobEvent),
        ("/v1/fine_tuning/jobs/{job_id}/checkpoints", "get"): page_of(FineTuningJobCheckpoint),
    }
    models = [(m, "serialization") for m in {*answers.values(), ApiErrorBody}] + [(JobRequest, "validation")]
    refs, defs = models_json_schema(models, ref_template="#/components/schemas/jobs.{model}")  # apart from vLLM's
    doc = get_openapi(title="ftops fine-tuning", version="1", routes=app.routes)
    error = {
        "description": "An error in OpenAI's shape",
        "content": {"application/json": {"schema": refs[(ApiErrorBody, "serialization")]}},
    }
    for path, item in doc["paths"].items():
        for method, op in item.items():
            answer = answers.get((path, method))
            ok = (
                {"content": {"application/json": {"schema": refs[(answer, "serialization")]}}}
                if answer is not None
                else {"content": {"application/jsonl": {"schema": {"type": "string"}}}}  # a file's bytes
            )
            op["responses"] = {"200": {"description": "OK", **ok}, "default": error}
    doc["paths"]["/v1/fine_tuning/jobs"]["post"]["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": refs[(JobRequest, "validation")]}},
    }
    doc["paths"]["/v1/files"]["post"]["requestBody"] = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "JSON Lines"},
                        "purpose": {"type": "string", "enum": ["fine-tune"]},
                    },
                }
            }
        },
    }
    return {"paths": doc["paths"], "components": {"schemas": {f"jobs.{k}": v for k, v in defs["$defs"].items()}}}
