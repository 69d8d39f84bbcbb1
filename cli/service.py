"""The service ``ftops serve`` runs: inference (``ftops.serving``) and OpenAI's fine-tuning API
(``ftops.training``) behind one ``base_url``, one port and one set of API keys, as OpenAI serves both.

    bentoml serve ftops.cli.service:FtopsLLM --port 3000      # or: ftops serve

Composed here, at the top, so that serving never imports training. ``jobs:`` in the serving config sets the
fine-tuning API up (``ftops.jobs.service.JobsConfig``; ``jobs: {enabled: false}`` serves inference alone).
"""

from __future__ import annotations

from ftops.jobs.api import openapi_part
from ftops.jobs.service import build
from ftops.serving.config import load_config
from ftops.serving.gateway import Mount
from ftops.serving.service import FtopsLLM, mount

_jobs = build(load_config().jobs)
if _jobs is not None:
    mount(
        Mount(
            ("/v1/files", "/v1/fine_tuning"),
            _jobs.app,
            _jobs.start,
            _jobs.stop,
            openapi_part(_jobs.app),
            busy=_jobs.busy,  # a local job trains: the engine pauses between requests (engine.pause_while_training)
        )
    )

__all__ = ["FtopsLLM"]
