"""``/v1/fine_tuning/jobs``: create, list, read and cancel fine-tuning jobs, with their events and checkpoints.

Creating a job only records it (``validating_files``); an executor (``runner.py``, ``k8s_executor.py``) runs it. A
job belongs to the key that created it: another key gets 404, the admin key sees all.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from pydantic import ValidationError

from ftops.api_keys import ADMIN_KEY_ID
from ftops.jobs.dependencies import allowed_bases, job_store, owner, page_limit
from ftops.jobs.protocol import (
    ApiError,
    JobRequest,
    checkpoint_object,
    event_object,
    job_object,
    page,
    validation_error,
)
from ftops.jobs.store import FINAL, JobStore

router = APIRouter()


@router.post("/v1/fine_tuning/jobs")
async def create_job(request: Request):
    key_id = owner(request)
    job = await _job_request(request)
    bases = allowed_bases(request)
    if job.model not in bases:
        raise ApiError(
            404,
            f"The model {job.model!r} does not exist or is not a base this server fine-tunes "
            f"(bases: {', '.join(bases) or 'none imported'}).",
            "model_not_found",
            "model",
        )
    store = job_store(request)
    _check_files(store, job, key_id)
    row = store.add_job(key_id or ADMIN_KEY_ID, job.record())
    store.add_event(row["id"], f"Created fine-tuning job: {row['id']}")
    store.add_event(row["id"], f"Validating training file: {job.training_file}")
    return job_object(row)


@router.get("/v1/fine_tuning/jobs")
async def list_jobs(request: Request, after: str | None = None, limit: str | None = None):
    rows, more = job_store(request).list_jobs(owner(request), after, page_limit(limit))
    return page([job_object(r) for r in rows], more)


@router.get("/v1/fine_tuning/jobs/{job_id}")
async def get_job(request: Request, job_id: str):
    return job_object(_own_job(job_store(request), job_id, owner(request)))


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str):
    store = job_store(request)
    row = _own_job(store, job_id, owner(request))
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


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
async def job_events(request: Request, job_id: str, after: str | None = None, limit: str | None = None):
    store = job_store(request)
    _own_job(store, job_id, owner(request))
    rows, more = store.events(job_id, after, page_limit(limit))
    return page([event_object(r) for r in rows], more)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
async def job_checkpoints(request: Request, job_id: str, after: str | None = None, limit: str | None = None):
    store = job_store(request)
    _own_job(store, job_id, owner(request))
    rows, more = store.checkpoints(job_id, after, page_limit(limit, 10))
    return page([checkpoint_object(r) for r in rows], more)


def _own_job(store: JobStore, job_id: str, key_id: str | None) -> dict:
    row = store.get_job(job_id, key_id)
    if row is None:
        raise ApiError(404, f"No such fine-tuning job: {job_id}", "fine_tuning_job_not_found", "fine_tuning_job_id")
    return row


async def _job_request(request: Request) -> JobRequest:
    """The body as a :class:`JobRequest` (read here, not by FastAPI, so that a bad one answers 400 naming it)."""
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "The body is not valid JSON.", "invalid_json") from None
    try:
        return JobRequest.model_validate(body)
    except ValidationError as e:
        raise validation_error(e) from None


def _check_files(store: JobStore, job: JobRequest, key_id: str | None) -> None:
    """The job's training and validation files: this key's, uploaded with purpose ``fine-tune``."""
    for param in ("training_file", "validation_file"):
        file_id = getattr(job, param)
        if file_id is None:
            continue
        row = store.get_file(file_id, key_id)
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


def _now() -> int:
    return int(time.time())
