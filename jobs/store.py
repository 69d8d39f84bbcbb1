"""Where the fine-tuning API keeps its files and jobs: one database and one folder of uploaded bytes.

Embedded default: SQLite at ``$FTOPS_HOME/jobs.db`` and the bytes under ``$FTOPS_HOME/files/``. ``FTOPS_JOBS_URL``
(or ``jobs.url`` in the serving config) points at PostgreSQL for a team; the folder (``FTOPS_FILES_DIR``) must then
be one every worker reads, e.g. a shared volume. Every row is committed before a call returns, so a restart of the
service loses no file and no queued job. Ids follow OpenAI's shapes: ``file-<hex>``, ``ftjob-<hex>``,
``ftevent-<hex>``, ``ftckpt-<hex>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ftops import settings
from ftops.env import FTOPS_FILES_DIR, FTOPS_JOBS_URL
from ftops.errors import FtopsError

metadata = sa.MetaData()
files_table = sa.Table(
    "ftops_files",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False, index=True),  # the API key id that uploaded it
    sa.Column("filename", sa.String(512), nullable=False),
    sa.Column("purpose", sa.String(40), nullable=False),
    sa.Column("bytes", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
)
jobs_table = sa.Table(
    "ftops_fine_tuning_jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False, index=True),  # creation order, for listing and the queue
    sa.Column("owner", sa.String(200), nullable=False, index=True),
    sa.Column("status", sa.String(32), nullable=False, index=True),
    sa.Column("request", sa.JSON, nullable=False),  # model, training_file, validation_file, hyperparameters, ...
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Integer, nullable=True),
    sa.Column("finished_at", sa.Integer, nullable=True),
    sa.Column("estimated_finish", sa.Integer, nullable=True),
    sa.Column("run_id", sa.String(64), nullable=True),
    sa.Column("fine_tuned_model", sa.String(300), nullable=True),
    sa.Column("trained_tokens", sa.Integer, nullable=True),
    sa.Column("error", sa.JSON, nullable=True),  # {"code", "message", "param"}
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("worker", sa.String(200), nullable=True),  # who runs it now (host:pid), for resume after a crash
)
events_table = sa.Table(
    "ftops_fine_tuning_events",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=False, nullable=False, index=True),
    sa.Column("job_id", sa.String(64), nullable=False, index=True),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("level", sa.String(10), nullable=False),
    sa.Column("type", sa.String(10), nullable=False),  # message | metrics
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", sa.JSON, nullable=True),
)
checkpoints_table = sa.Table(
    "ftops_fine_tuning_checkpoints",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("job_id", sa.String(64), nullable=False, index=True),
    sa.Column("step_number", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("name", sa.String(300), nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.UniqueConstraint("job_id", "step_number"),
)

ACTIVE = ("validating_files", "queued", "running")
FINAL = ("succeeded", "failed", "cancelled")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def default_url() -> str:
    return settings.database_url(FTOPS_JOBS_URL, "jobs.db")


def default_files_dir() -> Path:
    return Path(FTOPS_FILES_DIR.get() or settings.home() / "files")


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class JobStore:
    """Files, jobs, events and checkpoints of the fine-tuning API. Thread-safe; one per process."""

    def __init__(self, url: str | None = None, files_dir: Path | None = None) -> None:
        self.url = url or default_url()
        self.files_dir = Path(files_dir or default_files_dir())
        if self.url.startswith("sqlite:///"):
            Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(self.url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.engine.dispose()

    # ----------------------------------------------------------------------------------------- files
    def add_file(self, owner: str, filename: str, purpose: str, data: bytes) -> dict:
        """Store ``data`` (written and fsync'd before its row exists, so a row always has its bytes)."""
        file_id = new_id("file")
        path = self.files_dir / file_id
        tmp = path.with_suffix(".part")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        row = {
            "id": file_id,
            "owner": owner,
            "filename": filename,
            "purpose": purpose,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "created_at": int(time.time()),
            "deleted": False,
        }
        with self.engine.begin() as conn:
            conn.execute(files_table.insert().values(**row))
        return row

    def get_file(self, file_id: str, owner: str | None) -> dict | None:
        """The file's row, or None when it does not exist, was deleted, or belongs to another key (``owner`` None:
        the admin, who sees all)."""
        q = files_table.select().where(files_table.c.id == file_id, files_table.c.deleted.is_(False))
        if owner is not None:
            q = q.where(files_table.c.owner == owner)
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        return dict(row) if row else None

    def list_files(self, owner: str | None, purpose: str | None = None) -> list[dict]:
        q = files_table.select().where(files_table.c.deleted.is_(False)).order_by(files_table.c.created_at.desc())
        if owner is not None:
            q = q.where(files_table.c.owner == owner)
        if purpose:
            q = q.where(files_table.c.purpose == purpose)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def file_bytes(self, row: dict) -> bytes:
        """The stored bytes, checked against the sha256 recorded at upload."""
        data = (self.files_dir / row["id"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != row["sha256"]:
            raise FtopsError(f"file {row['id']}: stored bytes do not match the sha256 recorded at upload")
        return data

    def file_path(self, row: dict) -> Path:
        return self.files_dir / row["id"]

    def delete_file(self, file_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(files_table.update().where(files_table.c.id == file_id).values(deleted=True))
        (self.files_dir / file_id).unlink(missing_ok=True)

    # ----------------------------------------------------------------------------------------- jobs
    def add_job(self, owner: str, request: dict, status: str = "validating_files") -> dict:
        job_id = new_id("ftjob")
        with self._lock, self.engine.begin() as conn:
            seq = (conn.execute(sa.select(sa.func.max(jobs_table.c.seq))).scalar() or 0) + 1
            conn.execute(
                jobs_table.insert().values(
                    id=job_id,
                    seq=seq,
                    owner=owner,
                    status=status,
                    request=request,
                    created_at=int(time.time()),
                    cancel_requested=False,
                )
            )
        return self.get_job(job_id, None)  # type: ignore[return-value]

    def get_job(self, job_id: str, owner: str | None) -> dict | None:
        q = jobs_table.select().where(jobs_table.c.id == job_id)
        if owner is not None:
            q = q.where(jobs_table.c.owner == owner)
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        return dict(row) if row else None

    def list_jobs(self, owner: str | None, after: str | None, limit: int) -> tuple[list[dict], bool]:
        """Newest first, ``limit`` jobs after the job ``after`` (OpenAI's cursor); and whether more follow."""
        q = jobs_table.select().order_by(jobs_table.c.seq.desc())
        if owner is not None:
            q = q.where(jobs_table.c.owner == owner)
        if after:
            cursor = self.get_job(after, owner)
            if cursor is not None:
                q = q.where(jobs_table.c.seq < cursor["seq"])
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(q.limit(limit + 1)).mappings()]
        return rows[:limit], len(rows) > limit

    def update_job(self, job_id: str, only_if: tuple[str, ...] | None = None, **values: Any) -> bool:
        """Set ``values``; with ``only_if``, only while the job's status is one of them (compare-and-set: a job
        cancelled meanwhile is not moved back to running). True when the row changed."""
        q = jobs_table.update().where(jobs_table.c.id == job_id)
        if only_if is not None:
            q = q.where(jobs_table.c.status.in_(only_if))
        with self.engine.begin() as conn:
            return conn.execute(q.values(**values)).rowcount == 1

    def next_queued(self) -> dict | None:
        q = jobs_table.select().where(jobs_table.c.status == "queued").order_by(jobs_table.c.seq).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        return dict(row) if row else None

    def jobs_with_status(self, *statuses: str) -> list[dict]:
        q = jobs_table.select().where(jobs_table.c.status.in_(statuses)).order_by(jobs_table.c.seq)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    # ----------------------------------------------------------------------------------------- events
    def add_event(self, job_id: str, message: str, level: str = "info", type: str = "message", data=None) -> None:
        with self._lock, self.engine.begin() as conn:
            seq = (conn.execute(sa.select(sa.func.max(events_table.c.seq))).scalar() or 0) + 1
            conn.execute(
                events_table.insert().values(
                    id=new_id("ftevent"),
                    seq=seq,
                    job_id=job_id,
                    created_at=int(time.time()),
                    level=level,
                    type=type,
                    message=message,
                    data=json.loads(json.dumps(data)) if data is not None else None,
                )
            )

    def events(self, job_id: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        """Newest first, as OpenAI lists them."""
        q = events_table.select().where(events_table.c.job_id == job_id).order_by(events_table.c.seq.desc())
        with self.engine.connect() as conn:
            if after:
                cursor = conn.execute(sa.select(events_table.c.seq).where(events_table.c.id == after)).scalar()
                if cursor is not None:
                    q = q.where(events_table.c.seq < cursor)
            rows = [dict(r) for r in conn.execute(q.limit(limit + 1)).mappings()]
        return rows[:limit], len(rows) > limit

    # ----------------------------------------------------------------------------------------- checkpoints
    def add_checkpoint(self, job_id: str, step: int, name: str, metrics: dict) -> bool:
        """Record a checkpoint once (a resumed job reports its earlier checkpoints again)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    checkpoints_table.insert().values(
                        id=new_id("ftckpt"),
                        job_id=job_id,
                        step_number=step,
                        created_at=int(time.time()),
                        name=name,
                        metrics=metrics,
                    )
                )
            return True
        except sa.exc.IntegrityError:
            return False

    def checkpoints(self, job_id: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        q = (
            checkpoints_table.select()
            .where(checkpoints_table.c.job_id == job_id)
            .order_by(checkpoints_table.c.step_number.desc())
        )
        with self.engine.connect() as conn:
            if after:
                cursor = conn.execute(
                    sa.select(checkpoints_table.c.step_number).where(checkpoints_table.c.id == after)
                ).scalar()
                if cursor is not None:
                    q = q.where(checkpoints_table.c.step_number < cursor)
            rows = [dict(r) for r in conn.execute(q.limit(limit + 1)).mappings()]
        return rows[:limit], len(rows) > limit
