"""The training job: ``train(config) -> run_id``. Its steps (``_train``, each a function below it):

1. ``_setup``: checks that need no run (base imported, data valid, target modules exist, resumable run) stop with one
   clear line; then the tokenizer's training chat template and the model;
2. ``_start_run``, ``_log_inputs``, ``_log_trainer``: opens one MLflow run (or re-opens the run being resumed) and
   logs config params, lineage tags, the three splits as artifacts and dataset inputs with digests, and their Great
   Expectations validation report;
3. ``_fit``: trains with TRL's ``SFTTrainer`` (QLoRA, LoRA or full; ``_build_trainer``), checkpointing under
   ``$FTOPS_HOME/checkpoints/<run_id>/``, with per-step loss, learning rate, tokens/s, validation loss and token
   accuracy, and system metrics; the LM head scores only labelled positions (``training/lm_head.py``);
4. ``_log_outputs``: logs the adapter (``ftops.adapter.save_adapter``: safetensors + JSON + tokenizer + chat template
   + manifest) and the loss-curve PNG. Any error after the run is opened marks it FAILED.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftops import adapter as A
from ftops import settings
from ftops.base import BaseModel, load_base
from ftops.errors import FtopsError
from ftops.expectations.validate import save_gx_report, validate_file
from ftops.manifest import sha256_file, write_manifest
from ftops.precision import resolve, torch_dtype
from ftops.training.chat_template import training_chat_template
from ftops.training.config import TrainConfig
from ftops.training.lm_head import labelled_positions_only
from ftops.training.packing import use_packed_rows

# torch, transformers, peft, trl, accelerate, datasets, pandas, mlflow and ftops.training.callbacks (transformers) are
# imported in the functions that use them: the CLI and the jobs runner import this module and must start fast, and
# HF_HUB_OFFLINE must be set (``_train``) before transformers is first imported.

SPLITS = ("train", "validation", "test")


@dataclass
class Split:
    """One validated data split."""

    name: str
    path: Path
    examples: list[dict]
    report: Any  # ftops.expectations.validate.ValidationReport

    @property
    def jsonl(self) -> str:
        """The examples as chat JSONL: what is trained on and logged as ``data/<split>.jsonl``."""
        return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.examples)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.jsonl.encode()).hexdigest()


def checkpoints_dir(run_id: str) -> Path:
    """Where a run's Trainer checkpoints live: ``$FTOPS_HOME/checkpoints/<run_id>/``."""
    return settings.home() / "checkpoints" / run_id


# ---------------------------------------------------------------------------------------------------------------
# Checks before any run exists


_VALIDATED: dict[tuple[str, str, int | None], Any] = {}  # (file sha256, tokenizer, context) -> report


def validate_split(name: str, path: Path, tokenizer, context_length: int | None) -> Split:
    """Validate one split with the data contract (``ftops.expectations.validate``); raise on the first error.

    A file already validated in this process with the same content and tokenizer is not validated again (a resumed
    job, a benchmark running several jobs): the report is kept by the file's sha256."""
    if not path.is_file():
        raise FtopsError(f"data.{name}: {path}: no such file; run `ftops data split DATA.jsonl --out DIR` first")
    key = (sha256_file(path), getattr(tokenizer, "name_or_path", ""), context_length)
    report = _VALIDATED.get(key)
    if report is None:
        report = validate_file(path, tokenizer=tokenizer, context_length=context_length)
    if not report.valid:
        first = report.errors[0]
        more = f" (+{len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        raise FtopsError(f"data.{name}: {path}: {first}{more}; run `ftops data validate {path}` for the full report")
    if not report.examples:
        raise FtopsError(f"data.{name}: {path}: no examples")
    _VALIDATED[key] = report
    return Split(name, path, [{"messages": e["messages"]} for e in report.examples], report)


def linear_module_names(model) -> set[str]:
    """Short names of the model's linear layers (``q_proj``, ...), the names LoRA ``target_modules`` match."""
    import torch

    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def check_target_modules(config: TrainConfig, base: BaseModel) -> None:
    """Every LoRA target names a module of the base; checked on an empty (meta-device) model, before any loading."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base.path))
    names = {n for n, _ in model.named_modules()}
    linear = linear_module_names(model)
    for target in config.lora.target_modules:
        if not any(n == target or n.endswith("." + target) for n in names):
            raise FtopsError(
                f"lora.target_modules: {target!r} is not a module of base {base.name!r} ({base.architecture}); "
                f"its linear modules are: {', '.join(sorted(linear))}"
            )


def load_model(config: TrainConfig, base: BaseModel):
    """The base model as the method needs it: NF4 4-bit (double quant) computing in the config's dtype for QLoRA,
    the base in that dtype for LoRA, fp32 weights (bf16 autocast where native) for full fine-tuning."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = torch_dtype(config.precision)
    kwargs: dict[str, Any] = {}
    if config.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["dtype"] = dtype
    else:
        kwargs["dtype"] = dtype if config.method == "lora" else torch.float32
    if torch.cuda.is_available():  # one copy per process, on its own GPU (4-bit weights cannot be moved later)
        kwargs["device_map"] = {"": _process().local_process_index}
    try:
        return AutoModelForCausalLM.from_pretrained(base.path, **kwargs)
    except (OSError, ValueError) as e:
        raise FtopsError(f"base {base.name!r}: cannot load {base.path} ({e}); re-run `ftops base import`") from e


#: glibc's ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_host_memory() -> bool:
    """Make glibc's malloc keep what this process frees for reuse: large blocks come from the heap instead of fresh
    ``mmap`` regions (``M_MMAP_MAX`` 0), and the heap is not trimmed back to the OS (``M_TRIM_THRESHOLD`` at its
    maximum). A training step frees and allocates the same large activations every time; by default each of those
    is unmapped and faulted in (zeroed by the kernel) again. True when applied; False off Linux/glibc."""
    libc = _glibc()
    return libc is not None and libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1


def release_host_memory() -> None:
    """Undo :func:`keep_host_memory`: glibc's default limits again (64Ki ``mmap``'d blocks, trim above 128 KiB), and
    what the heap holds free goes back to the OS now (``malloc_trim``)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_MAX, 65536)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
        libc.malloc_trim(0)


@contextlib.contextmanager
def host_memory_kept(enabled: bool = True) -> Iterator[bool]:
    """:func:`keep_host_memory` for the block, released after it (a process that trains in-process, such as ``ftops
    demo`` or a test, gets glibc's behaviour back); yields whether it applied."""
    applied = enabled and keep_host_memory()
    try:
        yield applied
    finally:
        if applied:
            release_host_memory()


def _glibc():
    """The process's own C library when it is glibc on Linux (``mallopt`` is glibc's), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(None)


def run_params(config: TrainConfig, base: BaseModel) -> dict[str, str]:
    """The run's params: the resolved config (run name filled in) plus ``base_path``."""
    return {**config.to_params(), "run_name": resolved_run_name(config), "base_path": base.path}


def resolved_run_name(config: TrainConfig) -> str:
    return config.run_name or f"{config.base}-{config.method}"


def _check_resume(config: TrainConfig, base: BaseModel, splits: dict[str, Split]) -> Path:
    from mlflow.exceptions import MlflowException

    client = settings.mlflow_client()
    try:
        run = client.get_run(config.resume)
    except MlflowException:
        raise FtopsError(f"resume={config.resume}: no such MLflow run in {settings.tracking_uri()}") from None
    if run.info.status == "FINISHED":
        raise FtopsError(f"resume={config.resume}: that run already finished; start a new run without resume=")
    logged, wanted = run.data.params, run_params(config, base)
    diff = [k for k in sorted(set(logged) | set(wanted)) if logged.get(k) != wanted.get(k)]
    if diff:
        k = diff[0]
        raise FtopsError(
            f"resume={config.resume}: the config differs from the run's at {k!r} (run: {logged.get(k)!r}, now: "
            f"{wanted.get(k)!r}); resume with the same config"
        )
    for name, split in splits.items():
        if run.data.tags.get(f"{A.TAG_DATASET_PREFIX}{name}.digest") != split.digest:
            raise FtopsError(
                f"resume={config.resume}: data.{name} ({split.path}) is not the data that run trained on "
                "(digest differs); resume with the same data"
            )
    folder = checkpoints_dir(config.resume)
    last = last_complete_checkpoint(folder)
    if last is None:
        raise FtopsError(
            f"resume={config.resume}: no complete checkpoint under {folder}; start a new run without resume="
        )
    return last


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest ``checkpoint-N`` under ``folder`` that was written to the end. The Trainer writes a checkpoint's
    ``trainer_state.json`` last, so a job killed while saving leaves a folder without it (or with it cut short):
    such a folder is skipped, with a note, and the one before it is used."""
    if not folder.is_dir():
        return None
    steps = sorted(
        (int(p.name.split("-", 1)[1]), p)
        for p in folder.glob("checkpoint-*")
        if p.is_dir() and p.name.split("-", 1)[1].isdigit()
    )
    for _, path in reversed(steps):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            print(
                f"note: {path.name} is incomplete (the job was killed while writing it); skipping it",
                file=sys.stderr,
            )
            continue
        return path
    return None


# ---------------------------------------------------------------------------------------------------------------
# Logging to the run


def _log_data(splits: dict[str, Split], work: Path) -> None:
    """The splits as artifacts ``data/<split>.jsonl``, as MLflow dataset inputs with digests, plus tags and the
    GX validation reports under ``data/validation_report/<split>/``."""
    import mlflow
    import pandas as pd

    data_dir = work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        out = data_dir / f"{name}.jsonl"
        out.write_text(split.jsonl)
        digest = sha256_file(out)
        mlflow.set_tag(f"{A.TAG_DATASET_PREFIX}{name}.digest", digest)
        mlflow.set_tag(f"{A.TAG_DATASET_PREFIX}{name}.source", str(split.path.resolve()))
        mlflow.log_metric(f"data.{name}.examples", len(split.examples))
        frame = pd.DataFrame({"messages": [json.dumps(e["messages"], ensure_ascii=False) for e in split.examples]})
        dataset = mlflow.data.from_pandas(frame, source=str(split.path.resolve()), name=name, digest=digest[:32])
        mlflow.log_input(dataset, context=name)
        save_gx_report(split.report, work / "validation_report" / name)
    mlflow.log_artifacts(str(data_dir), "data")
    mlflow.log_artifacts(str(work / "validation_report"), "data/validation_report")


def _trainable(model) -> tuple[int, int]:
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def sft_config(config: TrainConfig, output_dir: Path, run_name: str):
    """The ``trl.SFTConfig`` for a job (also used by bench/bench_train.py's plain-TRL side, with report_to none)."""
    import torch
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(output_dir),
        run_name=run_name,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        max_length=config.max_seq_length,
        packing=config.packing,
        assistant_only_loss=config.assistant_only_loss,
        gradient_checkpointing=config.gradient_checkpointing,
        bf16=resolve(config.precision) == "bf16",
        use_cpu=not torch.cuda.is_available(),
        eval_strategy="steps",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        save_only_model=False,
    )


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def train(config: TrainConfig, callbacks: list | tuple = ()) -> str:
    """Run one training job and return its MLflow run id. ``callbacks`` are extra ``TrainerCallback``s (tests use
    one to kill a job mid-way). Raises :class:`FtopsError` for bad input, before any run is created."""
    with host_memory_kept(config.keep_host_memory):  # training/config.py: keep_host_memory
        return _train(config, callbacks)


def _train(config: TrainConfig, callbacks: list | tuple) -> str:
    """The job's steps: set up (checks, data, model), open the run and log its inputs, train, log the outputs."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import mlflow

    setup = _setup(config)
    # Under `accelerate launch`/`torchrun` every process trains; only the main one talks to MLflow, and the others
    # learn the run id (for the shared checkpoint folder) from it.
    process = _process()
    main = process.is_main_process
    run_id = _start_run(config, setup.experiment) if main else None
    try:
        run_id = _broadcast(run_id, process)
        with tempfile.TemporaryDirectory(prefix="ftops-train-") as tmp:
            work = Path(tmp)
            if main and not config.resume:
                _log_inputs(config, setup, run_id, work)
            trainer, tps = _build_trainer(
                config,
                setup.model,
                setup.tokenizer,
                setup.splits,
                checkpoints_dir(run_id),
                resolved_run_name(config),
                callbacks,
            )
            if main:
                _log_trainer(config, trainer)
            _fit(trainer, setup.resume_from)
            if main:
                _log_outputs(config, setup, trainer, tps, work)
        if main:
            mlflow.end_run("FINISHED")
    except BaseException:
        if main:
            mlflow.end_run("FAILED")
        raise
    return run_id


@dataclass
class _Setup:
    """What :func:`_setup` prepared for the run: all checked, nothing logged yet."""

    base: BaseModel
    tokenizer: Any
    splits: dict[str, Split]
    model: Any
    experiment: str
    resume_from: Path | None  # the checkpoint to resume from (``resume=``)
    chat_template: str | None  # the base's own, put back on the tokenizer before it is saved with the weights


def _setup(config: TrainConfig) -> _Setup:
    """Step 1, checks that need no run: base imported, data valid, target modules exist, resumable run; each stops
    with one clear line. Then the training chat template and the model."""
    from transformers import AutoTokenizer

    base = load_base(config.base)
    names = _check_files(config, base)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    splits = {
        name: validate_split(name, Path(getattr(config.data, name)), tokenizer, base.context_length) for name in names
    }
    settings.configure_mlflow()
    experiment = settings.experiment_id()
    resume_from = _check_resume(config, base, splits) if config.resume else None
    original_template = tokenizer.chat_template
    if config.assistant_only_loss:
        tokenizer.chat_template = training_chat_template(tokenizer, base.name)
    model = load_model(config, base)
    return _Setup(base, tokenizer, splits, model, experiment, resume_from, original_template)


def _check_files(config: TrainConfig, base: BaseModel) -> list[str]:
    """The base's files, an empty ``output``, the LoRA targets and the data files; returns the splits to train on
    (the three of ``SPLITS``, plus ``replay`` when configured)."""
    if not Path(base.path, "config.json").is_file():
        raise FtopsError(f"base {base.name!r}: {base.path} is missing; re-run `ftops base import`")
    if config.output is not None and Path(config.output).exists() and any(Path(config.output).iterdir()):
        raise FtopsError(f"output: {config.output} exists and is not empty; choose an empty or new folder")
    if config.method != "full":
        check_target_modules(config, base)
    names = [*SPLITS, "replay"] if config.data.replay else list(SPLITS)
    for name in names:
        if not Path(getattr(config.data, name)).is_file():
            hint = "ftops data replay --out FILE" if name == "replay" else "ftops data split DATA.jsonl --out DIR"
            raise FtopsError(f"data.{name}: {getattr(config.data, name)}: no such file; run `{hint}` first")
    return names


def _start_run(config: TrainConfig, experiment: str) -> str:
    """Step 2 (main process): open the MLflow run, or re-open the one being resumed; returns its id."""
    import mlflow

    if config.resume:
        return mlflow.start_run(run_id=config.resume, log_system_metrics=True).info.run_id
    run_name = resolved_run_name(config)
    return mlflow.start_run(experiment_id=experiment, run_name=run_name, log_system_metrics=True).info.run_id


def _log_inputs(config: TrainConfig, setup: _Setup, run_id: str, work: Path) -> None:
    """Step 2 (main process, new run): config params, lineage tags, and the splits (:func:`_log_data`)."""
    import mlflow

    mlflow.log_params(run_params(config, setup.base))
    mlflow.set_tags(
        {
            A.TAG_RUN_ID: run_id,
            A.TAG_BASE_NAME: setup.base.name,
            A.TAG_BASE_SHA256: setup.base.sha256,
            A.TAG_QUANTIZATION: config.quantization,
            "ftops.method": config.method,
            **config.tags,
        }
    )
    if config.method != "full":
        mlflow.set_tags(
            {
                A.TAG_LORA_R: str(config.lora.r),
                A.TAG_LORA_TARGETS: ",".join(sorted(config.lora.target_modules)),
            }
        )
    _log_data(setup.splits, work)


def _log_trainer(config: TrainConfig, trainer) -> None:
    """Step 2 (main process): the trainable parameters as tags and, for a new run, ``training_args.json``."""
    import mlflow

    trainable, total = _trainable(trainer.model)
    mlflow.set_tags(
        {
            A.TAG_TRAINABLE_PARAMS: str(trainable),
            A.TAG_TRAINABLE_SHARE: f"{trainable / total:.6f}",
        }
    )
    if not config.resume:
        mlflow.log_dict(trainer.args.to_dict(), "training_args.json")


def _fit(trainer, resume_from: Path | None) -> None:
    """Step 3: the optimizer steps, from the checkpoint ``resume_from`` if given."""
    # everything loaded so far (MLflow, Great Expectations, datasets) stays alive for the whole run; frozen, the
    # cyclic garbage collector stops walking it again and again during the steps (bench_train.py: ftops/plain bf16
    # LoRA 0.91 without, 0.96 with, both within this machine's noise; BENCHMARKS.md)
    gc.collect()
    gc.freeze()
    try:
        with labelled_positions_only():  # the LM head skips prompt and padding positions (training/lm_head.py)
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        gc.unfreeze()


def _log_outputs(config: TrainConfig, setup: _Setup, trainer, tps, work: Path) -> None:
    """Step 4 (main process): mean tokens/s, the loss-curve PNG, and the weights (:func:`_log_weights`) saved with
    the base's own chat template."""
    import mlflow

    from ftops.training.callbacks import loss_curve

    if tps.mean_tokens_per_second:
        mlflow.log_metric("train_tokens_per_second", tps.mean_tokens_per_second, step=trainer.state.global_step)
    mlflow.log_figure(loss_curve(trainer.state.log_history), "loss_curve.png")
    setup.tokenizer.chat_template = setup.chat_template
    _log_weights(config, trainer.model, setup.tokenizer, setup.base, work)


def _process():
    """This process's place in a distributed launch (a single process without one)."""
    from accelerate import PartialState

    return PartialState()


def _broadcast(value, process):
    if process.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _build_trainer(config, model, tokenizer, splits, output_dir: Path, run_name: str, extra_callbacks):
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTTrainer

    from ftops.training.callbacks import MlflowMetrics, ProgressBar, TokensPerSecond

    tps = TokensPerSecond()
    trainer = SFTTrainer(
        model=model,
        args=sft_config(config, output_dir, run_name),
        # the replay examples (if any) join the training split; the Trainer's sampler shuffles them in
        train_dataset=Dataset.from_list(
            splits["train"].examples + (splits["replay"].examples if "replay" in splits else [])
        ),
        eval_dataset=Dataset.from_list(splits["validation"].examples),
        processing_class=tokenizer,
        peft_config=lora_config(config) if config.method != "full" else None,
        callbacks=[tps, ProgressBar(config.progress), MlflowMetrics(), *extra_callbacks],
    )
    trainer.remove_callback(PrinterCallback)  # disable_tqdm swaps the bar for raw dict prints; ProgressBar instead
    if config.packing and "flash" not in str(getattr(model.config, "_attn_implementation", "")):
        use_packed_rows(trainer)  # without varlen kernels, one flattened row per batch costs quadratic attention
    return trainer, tps


def _log_weights(config: TrainConfig, model, tokenizer, base: BaseModel, work: Path) -> None:
    import mlflow

    if config.method == "full":
        out = work / "model"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        for p in out.iterdir():
            if p.name == "README.md":
                p.unlink()
        write_manifest(out, {"base": {"name": base.name, "sha256": base.sha256}, "method": "full"})
        mlflow.log_artifacts(str(out), "model")
    else:
        out = work / A.ARTIFACT_PATH
        A.save_adapter(model, tokenizer, out, base.name, base.sha256, config.quantization)
        mlflow.log_artifacts(str(out), A.ARTIFACT_PATH)
    if config.output is not None:
        dest = Path(config.output)
        if dest.exists() and any(dest.iterdir()):
            raise FtopsError(f"output: {dest} exists and is not empty; the weights are in the MLflow run")
        shutil.copytree(out, dest, dirs_exist_ok=True)
