"""Serving: a BentoML service running vLLM with registry-resolved LoRA adapters behind vLLM's OpenAI-compatible API.

``service.py`` (the BentoML service), ``gateway.py`` (keys, limits, routing, ledger and metrics around vLLM's app),
``engine.py`` (the vLLM engine), ``adapters.py`` (registry resolution and checks), ``config.py`` (the typed config),
``cli.py`` (``ftops serve``); ``ledger.py``/``costs.py``/``cost_cli.py`` are the cost ledger and report.
"""
