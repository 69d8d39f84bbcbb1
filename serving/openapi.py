"""The service's own OpenAPI schema (``GET /openapi.json``): every ``/v1`` route it serves, in OpenAI's shapes.

The inference part is drawn from vLLM's own pydantic request and response models (the bodies vLLM validates), with
the error shape every route answers: ``{"error": {"message", "type", "param", "code"}}``. The apps mounted beside
inference (the fine-tuning API, composed at the top) bring their own part in ``Mount.openapi``; :func:`document`
merges them, so serving never imports training.

FastAPI (already vLLM's web framework) turns the models into the document; the routes below are stubs that only
describe the gateway's routes (``ftops.serving.gateway.Gateway``) and are never served.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict

TITLE = "ftops"
ERROR_RESPONSE = {
    "description": "An error in OpenAI's shape (401, 400, 403, 404, 405, 413, 429, 503)",
}


class ErrorObject(BaseModel):
    """OpenAI's error object. ``code`` is a string from the gateway (``invalid_api_key``, ``model_not_found``...)
    and the HTTP status as an integer from vLLM's own validation."""

    model_config = ConfigDict(title="ErrorObject")

    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class Error(BaseModel):
    """``{"error": {...}}``: the body of every answer that is not a success."""

    error: ErrorObject


def inference_part() -> dict:
    """The OpenAPI document of the gateway's own routes, from vLLM's pydantic models."""
    # vLLM's protocol models (heavy) and its FastAPI: only when the document is first asked for
    from fastapi import APIRouter, Body, FastAPI
    from fastapi.openapi.utils import get_openapi
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest, ChatCompletionResponse
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest, CompletionResponse
    from vllm.entrypoints.serve.engine.protocol import ModelList

    errors: dict[int | str, dict[str, Any]] = {"default": {"model": Error, **ERROR_RESPONSE}}
    event = {"type": "object", "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}
    stream = {"text/event-stream": {"schema": event}}  # "stream": true answers server-sent events, each one
    router = APIRouter()

    @router.post(
        "/v1/chat/completions",
        response_model=ChatCompletionResponse,
        responses={200: {"content": stream}, **errors},
        summary="Create a chat completion (base model, ``NAME`` at its alias, or pinned ``NAME:VERSION``)",
    )
    def chat_completions(body: ChatCompletionRequest = Body(...)):  # noqa: B008 - FastAPI's idiom
        raise NotImplementedError

    @router.post(
        "/v1/completions",
        response_model=CompletionResponse,
        responses={200: {"content": stream}, **errors},
        summary="Create a completion",
    )
    def completions(body: CompletionRequest = Body(...)):  # noqa: B008
        raise NotImplementedError

    @router.get(
        "/v1/models", response_model=ModelList, responses=errors, summary="The base and the adapters served now"
    )
    def models():
        raise NotImplementedError

    @router.get(
        "/v1/usage",
        response_model=dict[str, Any],
        responses=errors,
        summary="The cost report over the ledger (the admin key only; another key gets 403)",
    )
    def usage():
        raise NotImplementedError

    app = FastAPI()
    app.include_router(router)
    return get_openapi(title=TITLE, version="1", routes=app.routes)


def document(parts: list[dict], version: str = "1") -> dict:
    """The inference part merged with ``parts`` (each an OpenAPI document of a mounted app): paths and component
    schemas side by side. A path or schema name two parts both define, differently, is an error of the composition."""
    doc = inference_part()
    doc["info"] = {
        "title": TITLE,
        "version": version,
        "description": "OpenAI-compatible inference and fine-tuning. Every route needs 'Authorization: Bearer KEY'.",
    }
    doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    doc["security"] = [{"bearer": []}]
    for part in parts:
        for path, item in part.get("paths", {}).items():
            if path in doc["paths"]:
                raise ValueError(f"OpenAPI: {path} is described twice (by the gateway and a mounted app)")
            doc["paths"][path] = item
        for name, schema in part.get("components", {}).get("schemas", {}).items():
            mine = doc["components"]["schemas"].setdefault(name, schema)
            if mine != schema:
                raise ValueError(f"OpenAPI: two different schemas are named {name!r}; rename one")
    return doc
