"""The BentoML service: a vLLM engine with the base model and the registry's LoRA adapters, behind vLLM's own
OpenAI-compatible app, following the registry aliases.

    bentoml serve ftops.serving.service:FtopsLLM --port 3000      # or: ftops serve
    FTOPS_SERVE_CONFIG=configs/serve.yaml                   # which base and adapters (serving/config.py)

Startup returns at once (``/livez`` answers); the engine and the adapters load in the background and ``/readyz``
answers 200 only once they are in. A watcher polls the registry every ``poll_interval_s``: when an alias moves it
downloads and verifies the new version, loads it into the engine, and only then switches ``model: NAME`` to it;
the old version stays loaded, so requests in flight (and clients pinning ``NAME:VERSION``) finish normally.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import AsyncExitStack

import bentoml

from ftops.serving.config import ADMIN_KEY_ENV, load_api_keys, load_config
from ftops.serving.gateway import ApiKeyMiddleware, Gateway, Routing

log = logging.getLogger("ftops.serving")

_gateway = Gateway(service=None)
_keys: dict[str, str] = {}


@bentoml.asgi_app(_gateway, path="/")
@bentoml.service(name="ftops", workers=1, traffic={"timeout": 600})
class FtopsLLM:
    """Base model + registry-resolved LoRA adapters on one vLLM engine."""

    def __init__(self) -> None:
        from ftops import settings
        from ftops.base import load_base

        log.disabled = False  # BentoML's logging config disables loggers that exist before it runs
        log.setLevel(logging.INFO)  # swaps and refusals belong in the server log
        self.config = load_config()
        settings.configure_mlflow()
        self.base = load_base(self.config.base)
        _keys.clear()
        _keys.update(load_api_keys(self.config))
        if os.environ.get(ADMIN_KEY_ENV):  # the admin key may call everything, /v1/usage only with it
            _keys["admin"] = os.environ[ADMIN_KEY_ENV]
        if not _keys:
            log.warning("no API key configured (FTOPS_API_KEY or api_keys_file): every /v1 request will get 401")
        self.routing = Routing(base=self.base.name, aliases=dict(self.config.adapter_specs()))
        self.ready = False
        self.startup_error: str | None = None
        self.ledger = None
        self.engine_app = None
        self.engine_state = None
        self._stack = AsyncExitStack()
        self._tasks: list[asyncio.Task] = []
        self._load_lock = asyncio.Lock()
        self._refused: set[str] = set()
        _gateway.service = self

    def __is_ready__(self) -> bool:
        return self.ready

    @bentoml.on_startup
    async def _begin(self) -> None:
        self._tasks.append(asyncio.create_task(self._start()))

    @bentoml.on_shutdown
    async def _end(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self._stack.aclose()
        if self.ledger is not None:
            self.ledger.close()

    async def _start(self) -> None:
        from ftops.serving.engine import start_engine

        loop = asyncio.get_running_loop()
        try:
            from ftops.serving.ledger import Ledger

            self.ledger = await loop.run_in_executor(None, lambda: Ledger(url=self.config.ledger_url))
            _client, self.engine_app = await start_engine(self.base, self.config.engine, self._stack)
            self.engine_state = self.engine_app.state
            for name, alias in self.config.adapter_specs():
                await self._follow(name, alias, initial=True)
        except Exception as e:  # shown by /readyz callers and every request; the log has the traceback
            log.exception("ftops service failed to start")
            self.startup_error = f"{type(e).__name__}: {e}"
            return
        self.ready = True
        log.info(
            "ready: base %s, adapters %s",
            self.base.name,
            ", ".join(f"{n}:{v}" for n, v in self.routing.current.items()) or "none",
        )
        self._tasks.append(asyncio.create_task(self._watch()))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            for name, alias in self.config.adapter_specs():
                try:
                    await self._follow(name, alias)
                except Exception as e:  # keep serving the version we have; say why the new one is not served
                    log.error("registry watch %s@%s: %s", name, alias, e)

    async def _follow(self, name: str, alias: str, initial: bool = False) -> None:
        """Load the version ``alias`` points at, then route ``model: name`` to it."""
        from ftops.errors import FtopsError
        from ftops.serving.adapters import alias_version

        version = await asyncio.get_running_loop().run_in_executor(None, alias_version, name, alias)
        if version is None:
            if initial and self.config.require_adapters:
                raise FtopsError(f"registered model {name!r} has no alias {alias!r}")
            if name in self.routing.current:
                log.warning(
                    "%s@%s no longer exists; still serving version %s",
                    name,
                    alias,
                    self.routing.current[name],
                )
            return
        if self.routing.current.get(name) == version:
            return
        served = f"{name}:{version}"
        if served in self._refused:
            return
        try:
            await self._ensure_loaded(name, version, alias)
        except FtopsError:
            if initial and self.config.require_adapters:
                raise
            self._refused.add(served)
            raise
        previous = self.routing.current.get(name)
        self.routing.current[name] = version  # one dict store: the next request goes to the new version
        log.info("%s@%s -> version %s (was %s)", name, alias, version, previous)

    async def _ensure_loaded(self, name: str, version: str, alias: str | None) -> None:
        from ftops.serving.adapters import fetch_adapter
        from ftops.serving.engine import load_lora

        served = f"{name}:{version}"
        async with self._load_lock:
            if served in self.routing.loaded:
                return
            adapter = await asyncio.get_running_loop().run_in_executor(None, fetch_adapter, name, version, self.base)
            await load_lora(self.engine_app, served, str(adapter.path))
            self.routing.loaded[served] = {
                "name": name,
                "version": version,
                "alias": alias,
                "path": str(adapter.path),
            }

    async def load_pinned(self, model: str) -> tuple[str, str, str] | None:
        """``NAME:VERSION`` of a served registered model, loaded from the registry on first use; None if unknown."""
        from ftops.errors import FtopsError
        from ftops.serving.adapters import version_exists

        name, _, version = model.partition(":")
        if name not in self.routing.aliases or not version.isdigit() or model in self._refused:
            return None
        exists = await asyncio.get_running_loop().run_in_executor(None, version_exists, name, version)
        if not exists:
            return None
        try:
            await self._ensure_loaded(name, version, None)
        except FtopsError as e:
            log.error("pinned %s: %s", model, e)
            self._refused.add(model)
            return None
        return model, name, version


FtopsLLM.add_asgi_middleware(ApiKeyMiddleware, keys=lambda: _keys)
