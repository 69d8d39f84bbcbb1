"""OpenAI's fine-tuning API, self-hosted: ``/v1/files`` and ``/v1/fine_tuning/jobs`` in OpenAI's shapes.

The shapes are those the installed ``openai`` client parses (``protocol.py``), so the guides' code runs with only
``base_url``, ``api_key`` and the base model's name changed::

    file = client.files.create(file=open("tickets.jsonl", "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=file.id, model="smollm2-135m-instruct",
                                         hyperparameters={"n_epochs": 3})
    client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model      # NAME:VERSION, once the gate passed

This module builds the app from its routers, one per resource (``files.py``, ``fine_tuning.py``), with the store,
settings and imported bases on ``app.state`` (``dependencies.py``), and gives its part of the OpenAPI document.
The app belongs to the training stage; the service that mounts it beside inference is composed at the top
(``ftops.cli.service``), behind the same API keys. Files and jobs belong to the key that created them: another key
gets 404, the admin key sees all. Bad input gets OpenAI's error shape and status, never a 500.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, create_model
from pydantic.json_schema import models_json_schema

from ftops.jobs import files, fine_tuning
from ftops.jobs.dependencies import JobsApiSettings
from ftops.jobs.protocol import ApiError, ApiErrorBody, JobRequest, validation_error
from ftops.jobs.store import JobStore

__all__ = ["JobsApiSettings", "build_app", "openapi_part"]


def build_app(store: JobStore, settings: JobsApiSettings, known_bases: Callable[[], list[str]]) -> FastAPI:
    """The fine-tuning API over ``store``; ``known_bases()`` lists the imported base names."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.store, app.state.settings, app.state.known_bases = store, settings, known_bases
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _bad_request)
    app.add_exception_handler(404, _not_found)
    app.add_exception_handler(405, _method_not_allowed)
    app.include_router(files.router)
    app.include_router(fine_tuning.router)
    return app


async def _api_error(_request: Request, e: ApiError):
    return e.response()


async def _bad_request(_request: Request, e: RequestValidationError):
    return validation_error(e).response()


async def _not_found(request: Request, _e):
    return ApiError(404, f"Unknown request URL: {request.method} {request.url.path}.", "unknown_url").response()


async def _method_not_allowed(request: Request, _e):
    return ApiError(405, f"{request.method} {request.url.path} is not allowed.", "method_not_allowed").response()


# --------------------------------------------------------------------------------------------- its OpenAPI part
#: a file upload, as ``POST /v1/files`` reads it itself
UPLOAD_BODY = {
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


def openapi_part(app: FastAPI) -> dict:
    """This app's part of the service's OpenAPI schema (the service merges it into ``/openapi.json``): its routes as
    FastAPI sees them, with the request bodies it reads itself (:class:`JobRequest`, the multipart upload), the
    answers in the ``openai`` client's own models, and every error in OpenAI's shape (:class:`ApiError`; FastAPI's
    422 is never sent: a bad parameter answers 400)."""
    answers = _answers()
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
    doc["paths"]["/v1/files"]["post"]["requestBody"] = UPLOAD_BODY
    return {"paths": doc["paths"], "components": {"schemas": {f"jobs.{k}": v for k, v in defs["$defs"].items()}}}


def _answers() -> dict[tuple[str, str], type[BaseModel]]:
    """(path, method) -> the ``openai`` client's model of its answer (``/v1/files/{file_id}/content``: bytes)."""
    # heavy: the openai client's types take over a second to import; only the OpenAPI document needs them
    from openai.types import FileDeleted, FileObject
    from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
    from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

    return {
        ("/v1/files", "post"): FileObject,
        ("/v1/files", "get"): _page_of(FileObject),
        ("/v1/files/{file_id}", "get"): FileObject,
        ("/v1/files/{file_id}", "delete"): FileDeleted,
        ("/v1/fine_tuning/jobs", "post"): FineTuningJob,
        ("/v1/fine_tuning/jobs", "get"): _page_of(FineTuningJob),
        ("/v1/fine_tuning/jobs/{job_id}", "get"): FineTuningJob,
        ("/v1/fine_tuning/jobs/{job_id}/cancel", "post"): FineTuningJob,
        ("/v1/fine_tuning/jobs/{job_id}/events", "get"): _page_of(FineTuningJobEvent),
        ("/v1/fine_tuning/jobs/{job_id}/checkpoints", "get"): _page_of(FineTuningJobCheckpoint),
    }


def _page_of(item: type[BaseModel]) -> type[BaseModel]:
    """OpenAI's list page of ``item`` (:func:`ftops.jobs.protocol.page`)."""
    return create_model(
        f"{item.__name__}List",
        object=(Literal["list"], ...),
        data=(list[item], ...),
        has_more=(bool, ...),
        first_id=(str | None, None),
        last_id=(str | None, None),
    )
