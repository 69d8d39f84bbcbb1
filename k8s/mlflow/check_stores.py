"""Check that MLflow's stores answer before anything uses them: PostgreSQL (``MLFLOW_BACKEND_STORE_URI``) and the
artifact bucket (``MLFLOW_ARTIFACTS_DESTINATION`` at ``MLFLOW_S3_ENDPOINT_URL``, or AWS S3 when that is unset).

    python k8s/mlflow/check_stores.py      # the mlflow-migrate Job's first step (image: k8s/mlflow/Dockerfile)

``FTOPS_CREATE_BUCKET=1`` creates a missing bucket (the in-cluster MinIO starts empty); otherwise a missing bucket is
an error. Exit 0 when both answer, 1 with one line per problem (what, where, what to do) when not, 2 when a variable
is missing.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

REQUIRED = ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION")


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


def check_database(url: str) -> str | None:
    import sqlalchemy

    try:
        connect_args = {"connect_timeout": 10} if url.startswith("postgres") else {}
        engine = sqlalchemy.create_engine(url, connect_args=connect_args)
    except ModuleNotFoundError as e:  # SQLAlchemy 2.1 reads postgresql:// as psycopg 3; this image has psycopg2
        return (
            f"MLFLOW_BACKEND_STORE_URI: {_redacted(url)} needs the driver {e.name}, which is not installed; "
            "name the installed one in the URL (postgresql+psycopg2://...)"
        )
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    except Exception as e:  # the driver's own words say why (refused, unknown host, bad password)
        reason = str(getattr(e, "orig", e)).strip().splitlines()[0]
        return (
            f"MLFLOW_BACKEND_STORE_URI: {_redacted(url)} does not answer ({reason}); "
            "check the host, port, database and password in the Secret ftops-mlflow"
        )
    finally:
        engine.dispose()
    return None


def check_bucket(destination: str, endpoint: str | None, create: bool) -> str | None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    parts = urlsplit(destination)
    if parts.scheme != "s3" or not parts.netloc:
        return f"MLFLOW_ARTIFACTS_DESTINATION: {destination!r} is not s3://BUCKET[/PREFIX]"
    bucket, where = parts.netloc, endpoint or "AWS S3"
    s3 = boto3.client(
        "s3", endpoint_url=endpoint or None, config=Config(connect_timeout=10, retries={"max_attempts": 2})
    )
    try:
        s3.head_bucket(Bucket=bucket)
        return None
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code not in ("404", "NoSuchBucket") or not create:
            hint = "create it, or set FTOPS_CREATE_BUCKET=1" if code in ("404", "NoSuchBucket") else "check the keys"
            return f"MLFLOW_ARTIFACTS_DESTINATION: bucket {bucket!r} at {where}: {code or e} ({hint})"
    except BotoCoreError as e:
        return f"MLFLOW_S3_ENDPOINT_URL: {where} does not answer ({e}); check the endpoint in the Secret ftops-s3"
    try:
        s3.create_bucket(Bucket=bucket)
        print(f"created bucket {bucket!r} at {where}")
    except (BotoCoreError, ClientError) as e:
        return f"MLFLOW_ARTIFACTS_DESTINATION: could not create bucket {bucket!r} at {where}: {e}"
    return None


def main() -> int:
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        print(f"error: {', '.join(missing)} not set; put them in the Secret ftops-mlflow", file=sys.stderr)
        return 2
    problems = [
        check_database(os.environ["MLFLOW_BACKEND_STORE_URI"]),
        check_bucket(
            os.environ["MLFLOW_ARTIFACTS_DESTINATION"],
            os.environ.get("MLFLOW_S3_ENDPOINT_URL"),
            os.environ.get("FTOPS_CREATE_BUCKET") == "1",
        ),
    ]
    for problem in filter(None, problems):
        print(f"error: {problem}", file=sys.stderr)
    if any(problems):
        return 1
    print("stores ok: database answers, artifact bucket exists")
    return 0


if __name__ == "__main__":
    sys.exit(main())
