"""The BentoML service: a vLLM engine with the base model and the registry's LoRA adapters, behind vLLM's own
OpenAI-compatible app, following the registry aliases.

    bentoml serve ftops.serving.service:FtopsLLM --port 3000      # or: ftops serve
    FTOPS_SERVE_CONFIG=configs/serve.yaml                   # which base and adapters (serving/config.py)

Startup returns at once (``/livez`` answers); the engine and the adapters load in the background and ``/readyz``
answers 200 only once every followed model is served or refused. The followed models are the config's ``adapters``
plus, with ``discover`` (by default when ``adapters`` is empty), every registered model whose ``@production``
version was trained on the base, looked up again on every poll. A watcher polls the registry every
``poll_interval_s``: when an alias moves it checks the new version (gate verdict ``pass``, not revoked, the base),
downloads it and verifies its files against the digest the gate tagged, loads it into the engine, and only then
switches ``model: NAME`` to it; the old version stays loaded, so requests in flight (and clients pinning
``NAME:VERSION``) finish normally. A loaded version revoked in the registry is no longer served.

Failures are transient (MLflow, network, disk: retried with backoff, ``retry`` in the config, logged each time) or
permanent (not gated, revoked, digest mismatch, another base: refused for good, logged with the reason); ``/readyz``'s
body shows each model's state and every refused version. A failed start is retried too; ``/livez`` answers 503 once
it failed ``retry.start_attempts`` times in a row, or when the engine died, so that the orchestrator restarts the pod.

While a local fine-tuning job (the API mounted beside inference) trains on this host, the engine's processes are
stopped between requests (``engine.pause_while_training``, :class:`ftops.serving.engine.EnginePause`): every request
and adapter load continues them first, and they stay stopped only after 2 s with nothing to do. ``/readyz`` shows
``engine.paused``. SIGTERM and shutdown continue them for good. A worker killed with SIGKILL alone (not its process
group) leaves a paused engine stopped: kill the group, as circus and Kubernetes do.

SIGTERM drains (``drain_timeout_s``). What the stack does by itself: circus (BentoML's arbiter) forwards the signal to
the worker and to its children, vLLM's engine core among them; uvicorn (in the worker) stops accepting at once, closes
idle connections and waits for the open ones; vLLM's engine core aborts every request unless ``--shutdown-timeout``
is set (then it finishes them and refuses new ones). The listening socket belongs to the arbiter, which closes it only
when the worker has exited: a connection made after uvicorn stopped accepting would wait unanswered, then be reset.
So the service starts its engine with ``--shutdown-timeout`` and puts a drain before uvicorn's own handler: new
requests get 503 (``shutting_down``, ``Retry-After``, a ``refused`` row) and ``/readyz`` 503 while the requests in
flight run to their end; then uvicorn's shutdown runs (its grace bounded by what is left of the timeout: requests
still running then are cancelled, and recorded so). Connections that arrive after that, until the arbiter has exited
(a few seconds: the engine's teardown), are reset without an answer.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import bentoml

from ftops import settings
from ftops.adapter import alias_version
from ftops.api_keys import ApiKeyMiddleware, load_keys
from ftops.base import load_base
from ftops.errors import FtopsError, TransientError
from ftops.names import parse_model_ref
from ftops.redact import RedactFilter, redact
from ftops.serving.adapters import RefusedError, UnknownVersion, discover, fetch_adapter, refusal, version_tags
from ftops.serving.config import load_config
from ftops.serving.engine import EnginePause, load_lora, start_engine, unload_lora
from ftops.serving.gateway import Gateway, HealthRoutes, Mount
from ftops.serving.ledger import Ledger
from ftops.serving.routing import Routing

log = logging.getLogger("ftops.serving")
PAUSE_AFTER_IDLE_S = 2.0
"""``engine.pause_while_training``: how long the engine must have had nothing to do before it is paused."""

_gateway = Gateway()
"""The app BentoML mounts at ``/``: its decorator takes it when the class is defined, before any service exists. It
holds no request state until the service built in this process binds itself to it (``FtopsLLM.gateway``)."""


@dataclass
class ModelState:
    """One followed registered model as ``/readyz`` shows it."""

    alias: str
    """The alias it follows."""
    state: str = "loading"
    """``loading``, ``serving`` (the alias's version), ``retrying`` (a transient failure; ``last_error``),
    ``refused`` (the alias's version must not be served; ``reason``) or ``waiting`` (no such alias yet)."""
    target: str | None = None
    """The version the alias points at, as last read."""
    serving: str | None = None
    """The version ``model: NAME`` is served by now (may be the one before ``target``)."""
    last_error: str | None = None
    """The last transient failure."""
    reason: str | None = None
    """Why ``target`` is refused (or waited for)."""
    failures: int = 0
    """Transient failures in a row."""
    failed_version: str | None = None
    """The version those failures were about (None: reading the alias failed)."""
    retry_at: float = 0.0
    """Monotonic time of the next attempt."""

    def as_dict(self) -> dict:
        out = {"alias": self.alias, "state": self.state, "alias_version": self.target, "serving_version": self.serving}
        if self.state == "retrying":
            out.update(last_error=self.last_error, failures=self.failures)
        elif self.reason:
            out["reason"] = self.reason
        return out


@bentoml.asgi_app(_gateway, path="/")
@bentoml.service(name="ftops", workers=1, traffic={"timeout": 600})
class FtopsLLM:
    """Base model + registry-resolved LoRA adapters on one vLLM engine."""

    def __init__(self) -> None:
        _configure_log()
        self.config = load_config()
        settings.configure_mlflow()
        self.base = load_base(self.config.base)
        self.keys = load_keys(self.config.api_keys_file)  # the admin key may call everything, /v1/usage only it
        """``{key id: key}``: what the API key middleware checks each request against (:func:`_service_keys`)."""
        if not self.keys:
            log.warning("no API key configured (FTOPS_API_KEY or api_keys_file): every /v1 request will get 401")
        self.routing = Routing(base=self.base.name)
        self.models: dict[str, ModelState] = {}  # every followed model: the config's, then the discovered ones
        for name, alias in self.config.adapter_specs():
            self._adopt(name, alias)
        self._discovered: dict[tuple[str, str], bool] = {}  # (name, version) -> trained on this base
        self.refused: dict[str, str] = {}  # NAME:VERSION -> why it is never served by this process
        self._pinned_errors: dict[str, str] = {}  # NAME:VERSION -> the transient failure of its last load
        self.ready = False  # started: ledger, engine, the first look at every alias
        self.draining: float | None = None  # monotonic time of the SIGTERM that started the drain
        self.startup_error: str | None = None  # the last failed start attempt's error, while it is retried
        self.start_failures = 0
        self._start_step = "starting"
        self.ledger = None
        self.engine_client = None
        self.engine_app = None
        self.engine_state = None
        self.engine_pause = None  # ftops.serving.engine.EnginePause once the engine runs, if pausing applies
        self._engine_users = 0  # requests and adapter loads using the engine now
        self._engine_used = time.monotonic()  # when the last of them ended
        self._stack = AsyncExitStack()
        self._tasks: list[asyncio.Task] = []
        self._load_lock = asyncio.Lock()
        self._metrics_server = None
        self.gateway = _gateway  # the ASGI front (ftops.serving.gateway): this service's requests, mounts and drain
        self.gateway.service = self

    @bentoml.on_startup
    async def _begin(self) -> None:
        self._drain_on_sigterm()
        if self.config.metrics_port is not None:
            self._metrics_server = serve_metrics(self.config.metrics_host, self.config.metrics_port)
        for mount in self.gateway.mounts:
            if mount.start is not None:
                await asyncio.get_running_loop().run_in_executor(None, mount.start)
        self._tasks.append(asyncio.create_task(self._start()))

    @bentoml.on_shutdown
    async def _end(self) -> None:
        self._resume_engine("shutting down")
        for mount in self.gateway.mounts:
            if mount.stop is not None:
                await asyncio.get_running_loop().run_in_executor(None, mount.stop)
        for task in self._tasks:
            task.cancel()
        await self._stack.aclose()
        if self.ledger is not None:
            self.ledger.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()

    def _drain_on_sigterm(self) -> None:
        """Put :meth:`_drain` in front of the SIGTERM handler uvicorn installed (it has no hook of its own before it
        stops accepting); uvicorn's handler runs once the drain is over."""
        uvicorn_exit = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is not threading.main_thread() or not callable(uvicorn_exit):
            return  # not the worker's main thread under uvicorn: leave the signal alone
        loop = asyncio.get_running_loop()

        def on_sigterm(sig: int, frame) -> None:
            loop.call_soon_threadsafe(self._begin_drain, lambda: uvicorn_exit(sig, frame), uvicorn_exit)

        signal.signal(signal.SIGTERM, on_sigterm)

    def _begin_drain(self, shutdown, uvicorn_exit) -> None:
        if self.draining is not None:  # SIGTERM again (to the process group, then from the arbiter)
            return
        self.draining = time.monotonic()
        self._resume_engine("SIGTERM")  # a stopped engine core would neither finish its requests nor exit
        log.info(
            "SIGTERM: draining %d request(s) in flight (at most %d s); new requests get 503 and /readyz 503",
            self.gateway.active,
            self.config.drain_timeout_s,
        )
        self._tasks.append(asyncio.create_task(self._drain(shutdown, uvicorn_exit)))

    async def _drain(self, shutdown, uvicorn_exit) -> None:
        """Wait for the requests in flight (their ledger rows included), up to ``drain_timeout_s``, then hand over to
        uvicorn's shutdown with what is left of the timeout as its grace."""
        deadline = self.draining + self.config.drain_timeout_s
        while self.gateway.active and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        took = time.monotonic() - self.draining
        if self.gateway.active:
            log.warning("drain timeout: %d request(s) in flight after %.0f s are cancelled", self.gateway.active, took)
        else:
            log.info("drained in %.1f s: every request in flight ended and was recorded; shutting down", took)
        server = getattr(uvicorn_exit, "__self__", None)  # uvicorn.Server: its grace is what is left of ours
        if server is not None and hasattr(server, "config"):
            server.config.timeout_graceful_shutdown = max(deadline - time.monotonic(), 1.0)
        shutdown()

    def __is_ready__(self) -> bool:
        return self.readiness()[0]

    def __is_alive__(self) -> bool:
        return self.liveness()[0]

    def liveness(self) -> tuple[bool, dict]:
        """``/livez``: False when the engine is dead or the start failed ``retry.start_attempts`` times in a row,
        so that the orchestrator restarts the process. While draining it is alive: the engine core exits once its
        requests are done."""
        if self.draining is not None:
            return True, {"alive": True, "draining": True}
        if self.engine_client is not None and self.engine_client.errored:
            return False, {"alive": False, "reason": "the vLLM engine is dead; the process must be restarted"}
        if self.start_failures >= self.config.retry.start_attempts:
            return False, {
                "alive": False,
                "reason": f"the start failed {self.start_failures} times in a row (last: {self.startup_error}); "
                "still retrying, but the process should be restarted",
            }
        return True, {"alive": True}

    def readiness(self) -> tuple[bool, dict]:
        """``/readyz``: ready once the engine runs and no followed model is still loading or retrying without a
        version to serve; the body shows each model's state and every refused version with its reason."""
        alive, live = self.liveness()
        pending = [n for n, m in self.models.items() if m.serving is None and m.state in ("loading", "retrying")]
        if self.draining is not None:
            status = "draining"
        elif not alive:
            status = "dead"
        elif self.startup_error:
            status = "start_failed"
        elif not self.ready:
            status = "starting"
        elif pending:
            status = "loading"
        else:
            status = "ready"
        body = {
            "ready": status == "ready",
            "status": status,
            "base": self.base.name,
            "start": {"failures": self.start_failures, "last_error": self.startup_error},
            "models": {name: m.as_dict() for name, m in self.models.items()},
            "refused": dict(self.refused),
        }
        if not alive:
            body["reason"] = live["reason"]
        if self.engine_pause is not None:
            body["engine"] = {"paused": self.engine_pause.paused, "pauses": self.engine_pause.pauses}
        if self.draining is not None:
            body["drain"] = {"in_flight": self.gateway.active, "since_s": round(time.monotonic() - self.draining, 1)}
        return status == "ready", body

    def transient_failure(self, model: str) -> str | None:
        """Why ``NAME`` or ``NAME:VERSION``, which may be served, cannot be just now (the registry or the artifact
        store failed; retried): the gateway answers 503 with Retry-After, not 404. None otherwise."""
        state = self.models.get(model)
        if state is not None and state.serving is None and state.state == "retrying":
            return state.last_error
        return self._pinned_errors.get(model)

    def why_not_served(self, model: str) -> str | None:
        """Why ``NAME`` or ``NAME:VERSION`` is not served (refused, or could not be loaded just now); None if
        unknown."""
        if model in self.models and self.models[model].serving is None:
            return self.models[model].reason or self.models[model].last_error
        return self.refused.get(model) or self._pinned_errors.get(model)

    async def _start(self) -> None:
        """Start the ledger, the engine and the adapters; a failed start is retried with backoff."""
        while True:
            try:
                await self._start_once()
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:  # shown by /readyz, /livez (after retry.start_attempts) and every request
                self.start_failures += 1
                self.startup_error = redact(f"{self._start_step}: {type(e).__name__}: {e}")
                delay = self.config.retry.delay(self.start_failures)
                log.error(
                    "start failed (attempt %d, retrying in %.0f s%s): %s",
                    self.start_failures,
                    delay,
                    "; /livez answers 503" if self.start_failures >= self.config.retry.start_attempts else "",
                    self.startup_error,
                    exc_info=not isinstance(e, FtopsError),  # our own errors say what to do; others need the trace
                )
                await asyncio.sleep(delay)
        self.start_failures, self.startup_error, self.ready = 0, None, True
        log.info(
            "ready: base %s, adapters %s",
            self.base.name,
            ", ".join(f"{n}:{v}" for n, v in self.routing.current.items()) or "none",
        )
        self._tasks.append(asyncio.create_task(self._watch()))
        if self.engine_pause is not None:
            self._tasks.append(asyncio.create_task(self._pause_while_busy()))

    async def _start_once(self) -> None:
        """One start attempt; what already started (ledger, engine) is kept for the next."""
        loop = asyncio.get_running_loop()
        if self.ledger is None:
            self._start_step = "opening the ledger"
            self.ledger = await loop.run_in_executor(None, lambda: Ledger(url=self.config.ledger_url))
        if self.engine_app is None:
            self._start_step = "starting the vLLM engine"
            try:
                # vLLM's engine core gets SIGTERM with the worker (circus signals the children): it must finish what it
                # runs, not abort it
                drain = ["--shutdown-timeout", str(self.config.drain_timeout_s)]
                engine = self.config.engine.model_copy(update={"extra_args": [*self.config.engine.extra_args, *drain]})
                self.engine_client, self.engine_app = await start_engine(self.base, engine, self._stack)
            except BaseException:
                await self._stack.aclose()  # what did start of the engine goes; the next attempt starts afresh
                self._stack, self.engine_client, self.engine_app = AsyncExitStack(), None, None
                raise
            self.engine_state = self.engine_app.state
            self._prepare_pause()
        self._start_step = "loading the adapters"
        await self._discover()
        for name, model in list(self.models.items()):
            await self._follow(name, model.alias, force=True)
        if self.config.require_adapters:
            for name, alias in self.config.adapter_specs():
                model = self.models[name]
                if model.serving is None:
                    why = model.reason or model.last_error
                    raise FtopsError(f"{name}@{alias} is not served (require_adapters): {why}")

    # ----------------------------------------------------------------------------- pausing the engine for training
    def _prepare_pause(self) -> None:
        if not self.config.engine.pause_while_training or not any(m.busy for m in self.gateway.mounts):
            return
        pause = EnginePause(self.engine_client)
        if pause.available:
            self.engine_pause = pause
        else:
            log.warning("engine.pause_while_training: vLLM runs no engine process of its own here; nothing to pause")

    @contextmanager
    def engine_awake(self):
        """Around every use of the engine (a request, an adapter load): continue it first if it is paused, and keep
        it running until the use ends."""
        self._engine_users += 1
        if self.engine_pause is not None and self.engine_pause.paused:
            self.engine_pause.resume()
            log.info("engine continued: a request or an adapter load needs it")
        try:
            yield
        finally:
            self._engine_users -= 1
            self._engine_used = time.monotonic()

    def _resume_engine(self, why: str) -> None:
        pause, self.engine_pause = self.engine_pause, None  # and no pause from now on
        if pause is not None and pause.paused:
            pause.resume()
            log.info("engine continued: %s", why)

    async def _pause_while_busy(self) -> None:
        """Once a second: pause the engine while a mount's local work (a fine-tuning job) runs and the engine has had
        nothing to do for ``PAUSE_AFTER_IDLE_S``; continue it once that work ends. Runs on the event loop, as requests
        and adapter loads do, so that none can start between the check and the pause."""
        while self.engine_pause is not None:
            pause = self.engine_pause
            busy = any(m.busy() for m in self.gateway.mounts if m.busy is not None)
            idle = self._engine_users == 0 and time.monotonic() - self._engine_used >= PAUSE_AFTER_IDLE_S
            if busy and idle and not pause.paused:
                pause.pause()
                log.info("engine paused: a fine-tuning job trains on this host (the next request continues it)")
            elif not busy and pause.paused:
                pause.resume()
                log.info("engine continued: no fine-tuning job trains on this host any more")
            await asyncio.sleep(1.0)

    def _adopt(self, name: str, alias: str) -> None:
        """Follow ``name@alias`` from now on (``/readyz`` and ``/v1/models`` show it)."""
        self.models[name] = ModelState(alias=alias)
        self.routing.aliases[name] = alias

    async def _discover(self) -> None:
        """Follow every registered model newly found at the ``discover`` alias on this base (config ``discover``)."""
        alias = self.config.discover_alias()
        if alias is None:
            return
        found = await asyncio.get_running_loop().run_in_executor(None, discover, alias, self.base, self._discovered)
        for name in found:
            if name not in self.models:
                log.info("discovered %s@%s (trained on %s)", name, alias, self.base.name)
                self._adopt(name, alias)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            try:
                await self._discover()
            except TransientError as e:
                log.warning("registry watch: %s (next poll retries)", e)
            except Exception:
                log.exception("registry watch: discovering models")
            for name, model in list(self.models.items()):
                try:
                    await self._follow(name, model.alias)
                except Exception:  # a bug, not the registry: keep serving what we have, and say so
                    log.exception("registry watch %s@%s", name, model.alias)
            try:
                await self._recheck_loaded()
            except Exception:
                log.exception("registry watch: re-checking the loaded versions")

    async def _follow(self, name: str, alias: str, force: bool = False) -> None:
        """Load the version ``alias`` points at, then route ``model: name`` to it. Transient failures are retried
        with backoff (``force``: now), permanent ones refuse the version; both are logged and shown in /readyz."""
        model = self.models[name]
        now = time.monotonic()
        if model.failures and model.failed_version is None and now < model.retry_at and not force:
            return  # the registry could not be read: wait out the backoff
        try:
            version = await asyncio.get_running_loop().run_in_executor(None, alias_version, name, alias)
        except TransientError as e:
            return self._transient(model, None, f"{name}@{alias}", e)
        if model.failed_version != version:
            model.failures = 0
        model.target = version
        if version is None:
            if model.serving is not None and model.state != "waiting":
                log.warning("%s@%s no longer exists; still serving version %s", name, alias, model.serving)
            model.state, model.reason = "waiting", f"alias {alias!r} does not exist (yet)"
            return
        if model.serving == version:
            model.state, model.reason, model.last_error, model.failures = "serving", None, None, 0
            return
        served = f"{name}:{version}"
        if served in self.refused:
            model.state, model.reason = "refused", self.refused[served]
            return
        if model.failures and now < model.retry_at and not force:
            return
        if model.state != "retrying":
            model.state = "loading"
        try:
            await self._ensure_loaded(name, version, alias)
        except TransientError as e:
            return self._transient(model, version, served, e)
        except FtopsError as e:  # not gated, revoked, another base, digest mismatch, vLLM refused it
            self._refuse(served, str(e))
            return
        previous = model.serving
        self.routing.current[name] = version  # one dict store: the next request goes to the new version
        model.serving, model.state, model.reason, model.last_error, model.failures = version, "serving", None, None, 0
        log.info("%s@%s -> version %s (was %s)", name, alias, version, previous)

    def _transient(self, model: ModelState, version: str | None, what: str, error: Exception) -> None:
        model.failures += 1
        model.failed_version = version
        model.state, model.last_error = "retrying", str(error)
        delay = self.config.retry.delay(model.failures)
        model.retry_at = time.monotonic() + delay
        log.warning("%s: %s (attempt %d, retrying in %.0f s)", what, error, model.failures, delay)

    def _refuse(self, served: str, reason: str) -> None:
        """Never serve ``NAME:VERSION`` again in this process; stop routing to it if it was loaded."""
        name, _, version = served.partition(":")
        if served not in self.refused:
            log.error("refusing %s: %s", served, reason)
        self.refused[served] = reason
        if self.routing.loaded.pop(served, None) is not None and self.engine_app is not None:
            # out of the engine too: nothing (not even a request past the gateway) reaches it by name any more
            self._tasks.append(asyncio.get_running_loop().create_task(self._unload(served)))
        model = self.models.get(name)
        if model is None:
            return
        if self.routing.current.get(name) == version:
            del self.routing.current[name]
            model.serving = None
        if model.target == version:
            model.state, model.reason = "refused", reason

    async def _unload(self, served: str) -> None:
        try:
            with self.engine_awake():
                removed = await unload_lora(self.engine_app, served)
        except Exception:
            log.exception("unloading %s from the engine", served)
            return
        log.info("unloaded %s from the engine" if removed else "%s was not loaded in the engine", served)

    async def _recheck_loaded(self) -> None:
        """A loaded version revoked (or deleted) in the registry since it was loaded is no longer served."""
        loop = asyncio.get_running_loop()
        for served, info in list(self.routing.loaded.items()):
            try:
                tags = await loop.run_in_executor(None, version_tags, info["name"], info["version"])
            except TransientError as e:
                log.warning("re-checking %s: %s (next poll retries)", served, e)
                continue
            except RefusedError as e:
                self._refuse(served, str(e))
                continue
            if (reason := refusal(info["name"], info["version"], tags, self.base)) is not None:
                self._refuse(served, reason)

    async def _ensure_loaded(self, name: str, version: str, alias: str | None) -> None:
        served = f"{name}:{version}"
        async with self._load_lock:
            if served in self.routing.loaded:
                return
            adapter = await asyncio.get_running_loop().run_in_executor(None, fetch_adapter, name, version, self.base)
            with self.engine_awake():
                await load_lora(self.engine_app, served, str(adapter.path))
            self.routing.loaded[served] = {
                "name": name,
                "version": version,
                "alias": alias,
                "path": str(adapter.path),
            }

    async def load_pinned(self, model: str) -> tuple[str, str, str] | None:
        """``NAME:VERSION`` of a served registered model, checked and loaded from the registry on first use; None
        if unknown, refused or not loadable now (:meth:`why_not_served` says why)."""
        name, _, version = model.partition(":")
        # any registered model may be pinned (a fine-tuning job's NAME:VERSION answers at once): what loads is only
        # what fetch_adapter verifies (gate pass, not revoked, the gate's digest, this base)
        if parse_model_ref(model) != (name, None, version) or model in self.refused:
            return None
        try:
            await self._ensure_loaded(name, version, None)
        except TransientError as e:
            log.warning("pinned %s: %s (the next request retries)", model, e)
            self._pinned_errors[model] = str(e)
            return None
        except UnknownVersion:
            return None  # unknown, like any other name
        except FtopsError as e:
            self._refuse(model, str(e))
            return None
        self._pinned_errors.pop(model, None)
        return model, name, version


def serve_metrics(host: str, port: int):
    """Answer ``GET /metrics`` on ``host:port`` in a thread, without an API key: what BentoML's ``/metrics`` gives on
    the API port (its multiprocess registry: ftops's counters and histograms, vLLM's engine series). Every other path
    is 404, every other method 405. Returns the server (``shutdown()`` stops it)."""
    # bentoml's internals (heavy): loaded only where a metrics port is served
    from bentoml._internal.configuration.containers import BentoMLContainer

    client = BentoMLContainer.metrics_client.get()

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.split("?", 1)[0] != "/metrics":
                return self._answer(404, b"only /metrics is served on this port\n", "text/plain")
            self._answer(200, client.generate_latest(), client.CONTENT_TYPE_LATEST)

        def do_POST(self) -> None:  # noqa: N802
            self._answer(405, b"GET /metrics only\n", "text/plain")

        do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # a scrape every 15 s is not news
            pass

    server = ThreadingHTTPServer((host, port), Metrics)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="ftops-metrics", daemon=True).start()
    log.info("metrics: GET http://%s:%d/metrics (no API key)", host, port)
    return server


def mount(app: Mount) -> None:
    """Serve ``app`` beside inference on the same port and keys (called at import by the composing module)."""
    _gateway.mounts.append(app)


def _configure_log() -> None:
    """The ``ftops.serving`` logger of the running service: on at INFO, every record redacted (its message and
    traceback) on the way out; once per process however often a service is built."""
    log.disabled = False  # BentoML's logging config disables loggers that exist before it runs
    log.setLevel(logging.INFO)  # swaps and refusals belong in the server log
    if not any(isinstance(f, RedactFilter) for f in log.filters):
        log.addFilter(RedactFilter())  # the gateway's and the ledger's records go through this logger too


def _service_keys() -> dict[str, str]:
    """The API keys of the service built in this process (none before it is: every request gets 401)."""
    service = _gateway.service
    return service.keys if service is not None else {}


# BentoML builds the middleware per worker from these arguments, given when the class is defined: each reaches the
# service instance (through the gateway it binds to) only when a request comes.
FtopsLLM.add_asgi_middleware(ApiKeyMiddleware, keys=_service_keys, on_refused=_gateway.refuse_unkeyed)
FtopsLLM.add_asgi_middleware(HealthRoutes, service=lambda: _gateway.service)
