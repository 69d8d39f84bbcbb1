"""Serving: a BentoML service running vLLM with registry-resolved LoRA adapters behind vLLM's OpenAI-compatible API.

``service.py`` (the BentoML service and its lifecycle), ``gateway.py`` (the ASGI front: limits, then routing, the
engine, streaming and recording), ``routing.py`` (model names to engine names, ``/v1/models``), ``streaming.py``
(the answer relayed, usage kept), ``recording.py`` (the ledger row and Prometheus series of a request),
``engine.py`` (the vLLM engine), ``adapters.py`` (registry resolution and checks), ``config.py`` (the typed config),
``ledger.py`` with ``ledger_*.py`` (every request's row, durable: schema and Alembic upgrades, rows, spool, replica
id, metrics). The command ``ftops serve`` is ``ftops.cli.serve``; the cost model is ``ftops.costs``.
"""
