"""Serving: a BentoML service running vLLM with registry-resolved LoRA adapters behind vLLM's OpenAI-compatible API.

``service.py`` (the BentoML service), ``gateway.py`` (keys, limits, routing, ledger and metrics around vLLM's app),
``engine.py`` (the vLLM engine), ``adapters.py`` (registry resolution and checks), ``config.py`` (the typed config),
``ledger.py`` (every request's row, durable); the command ``ftops serve`` is ``ftops.cli.serve``, the cost model
``ftops.costs``.
"""
