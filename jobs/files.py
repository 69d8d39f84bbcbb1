"""``/v1/files``: upload, list, read and delete the JSON Lines files fine-tuning jobs train on.

A file belongs to the key that uploaded it: another key gets 404, the admin key sees all. An upload is checked only
for being JSON Lines here; the full data contract runs when a job uses the file (``validating_files``).
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ftops.api_keys import ADMIN_KEY_ID
from ftops.jobs.dependencies import api_settings, job_store, owner, page_limit
from ftops.jobs.protocol import ApiError, file_deleted, file_object, page
from ftops.jobs.store import JobStore

router = APIRouter()


@router.post("/v1/files")
async def create_file(request: Request):
    key_id = owner(request) or ADMIN_KEY_ID
    body = await _read_body(request, api_settings(request).max_upload_bytes)
    replay = Request(request.scope, receive=_replay(body))
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
    return file_object(job_store(request).add_file(key_id, filename, purpose, data))


@router.get("/v1/files")
async def list_files(
    request: Request,
    purpose: str | None = None,
    after: str | None = None,
    limit: str | None = None,
    order: str = "desc",
):
    rows = job_store(request).list_files(owner(request), purpose)
    if order == "asc":
        rows.reverse()
    if after:
        ids = [r["id"] for r in rows]
        rows = rows[ids.index(after) + 1 :] if after in ids else rows
    n = page_limit(limit, 10_000) if limit else len(rows)
    return page([file_object(r) for r in rows[:n]], len(rows) > n)


@router.get("/v1/files/{file_id}")
async def get_file(request: Request, file_id: str):
    return file_object(_own_file(job_store(request), file_id, owner(request)))


@router.get("/v1/files/{file_id}/content")
async def file_content(request: Request, file_id: str):
    store = job_store(request)
    row = _own_file(store, file_id, owner(request))
    return Response(store.file_bytes(row), media_type="application/jsonl")


@router.delete("/v1/files/{file_id}")
async def delete_file(request: Request, file_id: str):
    store = job_store(request)
    row = _own_file(store, file_id, owner(request))
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
    return file_deleted(row["id"])


def _own_file(store: JobStore, file_id: str, key_id: str | None) -> dict:
    row = store.get_file(file_id, key_id)
    if row is None:
        raise ApiError(404, f"No such File object: {file_id}", "file_not_found", "file_id")
    return row


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, 413 as soon as it is over ``max_bytes`` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"The upload is {declared} bytes; the limit is {max_bytes}.", "file_too_large", "file")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, f"The upload is over the limit of {max_bytes} bytes.", "file_too_large", "file")
    return bytes(body)


def _replay(body: bytes):
    """An ASGI ``receive`` that hands over ``body`` (already read) once."""
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
