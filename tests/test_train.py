"""The training job on the tiny random Llama (real SmolLM2 tokenizer and chat template), real TRL, real PEFT,
real bitsandbytes NF4, MLflow on a temporary SQLite store.

One QLoRA run (module fixture) is checked from every side: LoRA weights moved and base weights did not, the MLflow
run holds params/metrics/inputs/artifacts/tags, the adapter verifies and loads with PEFT and vLLM's adapter checks,
export merges it. A second run is killed mid-way and resumed into the same run; it must end where the first did.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_trainer
from transformers import TrainerCallback

from ftops import adapter as A
from ftops.errors import FtopsError
from ftops.precision import resolve
from ftops.training.config import TrainConfig

STEPS = 4


def _examples(n: int, offset: int) -> list[dict]:
    out = []
    for i in range(offset, offset + n):
        a, b = (i * 7) % 50, (i * 13) % 50
        out.append(
            {
                "messages": [
                    {"role": "user", "content": f"Add {a} and {b}."},
                    {"role": "assistant", "content": json.dumps({"sum": a + b})},
                ]
            }
        )
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("train-data")
    paths = {}
    for name, (n, offset) in {"train": (32, 0), "validation": (10, 100), "test": (10, 200)}.items():
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(e) + "\n" for e in _examples(n, offset)))
    return paths


@pytest.fixture(scope="module")
def home(tmp_path_factory, models_dir, tiny_base):
    """One FTOPS_HOME for this module's runs (the training runs are shared between tests)."""
    with pytest.MonkeyPatch.context() as mp:
        h = tmp_path_factory.mktemp("train-home")
        mp.setenv("FTOPS_HOME", str(h))
        mp.setenv("FTOPS_MODELS", str(models_dir))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield h


def tiny_config(data, **overrides) -> TrainConfig:
    settings = {
        "base": "tiny-llama",
        "data": {k: str(v) for k, v in data.items()},
        "method": "qlora",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "max_steps": STEPS,
        "batch_size": 2,
        "learning_rate": 1e-2,
        "lr_scheduler": "constant",
        "max_seq_length": 64,
        "gradient_checkpointing": False,
        "eval_steps": STEPS,
        "save_steps": 2,
        "logging_steps": 1,
        "progress": False,
    }
    return TrainConfig.model_validate(settings | overrides)


class WeightWatch(TrainerCallback):
    """Snapshots every parameter at the start and the end of training."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    def on_step_end(self, args, state, control, **kwargs):
        import torch
        from trl.trainer import utils as trl_utils

        # whether TRL's fused LM head takes its labelled-positions-only path on this CPU (training/lm_head.py)
        self.compact_head = trl_utils._use_triton(torch.device("cpu"))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def trained(home, data):
    from ftops.training.job import train

    watch = WeightWatch()
    run_id = train(tiny_config(data), callbacks=[watch])
    return run_id, watch


def test_lora_weights_change_and_base_weights_do_not(trained):
    import torch

    _, watch = trained
    assert watch.trainable and all("lora_" in n for n in watch.trainable)
    for name in watch.trainable:
        assert not torch.equal(watch.before[name], watch.after[name]), f"{name} did not move"
    frozen = [n for n in watch.before if n not in watch.trainable]
    assert any("q_proj.base_layer" in n for n in frozen) and any("embed_tokens" in n for n in frozen)
    for name in frozen:
        assert torch.equal(watch.before[name], watch.after[name]), f"base weight {name} changed"


def test_the_lm_head_scores_only_labelled_positions_while_training_and_not_after(trained):
    import torch
    from trl.trainer import utils as trl_utils

    _, watch = trained
    assert watch.compact_head is True
    assert trl_utils._use_triton(torch.device("cpu")) is False  # restored once the job is done


def test_run_holds_params_metrics_inputs_artifacts_and_lineage(trained, tiny_base, data):
    import mlflow

    run_id, _ = trained
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["method"] == "qlora" and p["lora.r"] == "8" and p["max_steps"] == str(STEPS)
    assert p["base_path"] == tiny_base.path and p["lora.target_modules"] == "q_proj,v_proj"
    assert p["keep_host_memory"] == "True"  # the default: glibc keeps freed blocks between steps
    for key in (
        "loss",
        "learning_rate",
        "tokens_per_second",
        "eval_loss",
        "eval_mean_token_accuracy",
        "train_tokens_per_second",
    ):
        assert key in run.data.metrics, key
    losses = client.get_metric_history(run_id, "loss")
    assert len(losses) >= STEPS and max(m.step for m in losses) == STEPS
    assert {m.step for m in client.get_metric_history(run_id, "eval_loss")} == {STEPS}
    assert all(m.value > 0 for m in client.get_metric_history(run_id, "tokens_per_second"))

    t = run.data.tags
    assert t[A.TAG_RUN_ID] == run_id and t[A.TAG_BASE_NAME] == "tiny-llama" and t[A.TAG_BASE_SHA256] == tiny_base.sha256
    # the compute dtype follows the machine (ftops/precision.py): bf16 where native, fp32 on CPUs that emulate it
    assert t[A.TAG_QUANTIZATION] == f"nf4-double-quant-{resolve()}" and t[A.TAG_LORA_R] == "8"
    assert t[A.TAG_LORA_TARGETS] == "q_proj,v_proj"
    assert int(t[A.TAG_TRAINABLE_PARAMS]) > 0 and 0 < float(t[A.TAG_TRAINABLE_SHARE]) < 0.1

    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "validation", "test"}
    for name, inp in inputs.items():
        assert {tag.value for tag in inp.tags} == {name}
        assert t[f"{A.TAG_DATASET_PREFIX}{name}.digest"].startswith(inp.dataset.digest)

    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"adapter", "data", "loss_curve.png", "training_args.json"} <= top
    assert {a.path for a in client.list_artifacts(run_id, "data")} >= {
        "data/train.jsonl",
        "data/validation.jsonl",
        "data/test.jsonl",
        "data/validation_report",
    }
    reports = {a.path for a in client.list_artifacts(run_id, "data/validation_report")}
    assert reports == {f"data/validation_report/{s}" for s in ("train", "validation", "test")}
    test_local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/data/test.jsonl")
    lines = Path(test_local).read_text().splitlines()
    assert [json.loads(x) for x in lines] == [json.loads(x) for x in data["test"].read_text().splitlines()]


def test_adapter_follows_the_contract_and_loads_with_peft_and_vllm(trained, tiny_base, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_id, _ = trained
    folder, manifest = A.download_adapter(f"runs:/{run_id}/{A.ARTIFACT_PATH}", tmp_path / "dl")
    assert manifest["base"] == {"name": "tiny-llama", "sha256": tiny_base.sha256}
    assert manifest["lora"]["r"] == 8 and manifest["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert manifest["quantization"] == f"nf4-double-quant-{resolve()}"
    names = set(manifest["files"])
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "chat_template.jinja",
    } <= names
    assert all(n.endswith((".safetensors", ".json", ".jinja")) for n in names)
    # the saved template is the base's own (no training-only {% generation %} markers)
    assert (folder / "chat_template.jinja").read_text().strip() == tiny_base.chat_template.strip()
    assert AutoTokenizer.from_pretrained(folder).chat_template == tiny_base.chat_template

    base = AutoModelForCausalLM.from_pretrained(tiny_base.path, dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        plain = base(ids).logits
        peft = PeftModel.from_pretrained(base, str(folder))
        adapted = peft(ids).logits
    assert not torch.allclose(plain, adapted, atol=1e-4)  # the adapter does something

    # vLLM's own adapter loader (what its engine runs on load_lora_adapter), without starting an engine
    from vllm.config.lora import LoRAConfig
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper

    helper = PEFTHelper.from_local_dir(str(folder), max_position_embeddings=2048)
    helper.validate_legal(LoRAConfig(max_lora_rank=16, max_loras=1))
    assert helper.r == 8 and set(helper.target_modules) == {"q_proj", "v_proj"}
    lora = LoRAModel.from_local_checkpoint(
        str(folder),
        {"q_proj", "k_proj", "v_proj", "o_proj"},
        helper,
        lora_model_id=1,
        device="cpu",
        dtype=torch.bfloat16,
    )
    assert sorted(lora.loras) == [f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")]


def test_export_merged_matches_base_plus_adapter(trained, tiny_base, tmp_path, capsys):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftops.cli import main
    from ftops.manifest import verify_manifest

    run_id, _ = trained
    out = tmp_path / "merged"
    assert main(["export", run_id, "--merged", str(out)]) == 0
    manifest = verify_manifest(out)
    assert manifest["merged_from"]["run_id"] == run_id and not any(n.startswith("adapter") for n in manifest["files"])
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    folder, _ = A.download_adapter(f"runs:/{run_id}/{A.ARTIFACT_PATH}", tmp_path / "dl")
    base = AutoModelForCausalLM.from_pretrained(tiny_base.path, dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, str(folder))
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft(ids).logits, atol=0.05)
    # a second export into the same folder refuses and keeps what is there
    assert main(["export", run_id, "--merged", str(out)]) == 1
    assert "not an empty folder" in capsys.readouterr().err
    assert verify_manifest(out) == manifest


def test_labels_mask_everything_but_the_assistant(home, data, tiny_base, tmp_path):
    trainer, tokenizer, splits = tiny_trainer(tiny_config(data, method="lora"), tiny_base, data, tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for row in range(2):
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        kept = tokenizer.decode(ids[labels != -100])
        answer = splits["train"].examples[row]["messages"][-1]["content"]
        assert kept == answer + "<|im_end|>"
        assert (labels == -100).sum() > len(tokenizer(answer)["input_ids"])  # system + user tokens are masked


class Killed(Exception):
    """Stands for the job being killed mid-way."""


class KillAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


def test_killed_job_resumes_into_the_same_run_and_ends_like_an_uninterrupted_one(trained, data, home):
    import mlflow

    from ftops.training.job import checkpoints_dir, train

    reference, _ = trained
    config = tiny_config(data)
    with pytest.raises(Killed):
        train(config, callbacks=[KillAt(3)])
    client = mlflow.MlflowClient()
    killed = client.search_runs([client.get_run(reference).info.experiment_id], "attributes.status = 'FAILED'")
    assert len(killed) == 1
    run_id = killed[0].info.run_id
    assert (checkpoints_dir(run_id) / "checkpoint-2").is_dir() and not (
        checkpoints_dir(run_id) / "checkpoint-4"
    ).exists()

    assert train(config.model_copy(update={"resume": run_id})) == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    resumed_loss = client.get_metric_history(run_id, "loss")
    assert max(m.step for m in resumed_loss) == STEPS
    ref_loss = {m.step: m.value for m in client.get_metric_history(reference, "loss")}
    final = {m.step: m.value for m in resumed_loss}
    assert final[STEPS] == pytest.approx(ref_loss[STEPS], rel=0.02, abs=0.02)
    assert run.data.metrics["eval_loss"] == pytest.approx(
        client.get_run(reference).data.metrics["eval_loss"], rel=0.02, abs=0.02
    )
    assert {a.path for a in client.list_artifacts(run_id)} >= {"adapter", "loss_curve.png"}

    # resuming a finished run, or with other settings, stops with one line
    with pytest.raises(FtopsError, match="already finished"):
        train(config.model_copy(update={"resume": run_id}))


def _runs(client) -> list:
    exp = client.get_experiment_by_name("ftops")
    return client.search_runs([exp.experiment_id]) if exp else []


@pytest.mark.parametrize("case", ["bad-data", "missing-base", "bad-target", "missing-file"])
def test_bad_input_stops_before_training_with_one_line(case, data, ftops_home, tiny_base, tmp_path, capsys):
    import mlflow
    import yaml

    from ftops.cli import main
    from ftops.settings import configure_mlflow

    job = {
        "base": "tiny-llama",
        "data": {k: str(v) for k, v in data.items()},
        "method": "lora",
        "max_steps": 1,
        "progress": False,
    }
    if case == "bad-data":
        bad = tmp_path / "bad.jsonl"
        bad.write_text(data["train"].read_text() + '{"messages": [{"role": "user"}]}\n')
        job["data"]["train"] = str(bad)
    elif case == "missing-base":
        job["base"] = "never-imported"
    elif case == "bad-target":
        job["lora"] = {"target_modules": ["q_proj", "query_key_value"]}
    elif case == "missing-file":
        job["data"]["validation"] = str(tmp_path / "nope.jsonl")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    assert main(["train", str(path)]) == 1
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("ftops train:")]
    assert len(ours) == 1 and ours[0].startswith("ftops train: error:") and "Traceback" not in err
    err = ours[0]
    expected = {
        "bad-data": "bad.jsonl: line 33",
        "missing-base": "'never-imported' is not imported",
        "bad-target": "'query_key_value' is not a module",
        "missing-file": "nope.jsonl: no such file",
    }[case]
    assert expected in err
    configure_mlflow()
    assert [r for r in _runs(mlflow.MlflowClient()) if r.info.status != "FAILED"] == []


def test_full_fine_tune_with_packing_through_the_cli(home, data, tmp_path, capsys):
    """``method: full`` trains every weight and logs the whole model (no adapter); packing on; the CLI prints the id."""
    import mlflow
    import yaml

    from ftops.cli import main
    from ftops.manifest import verify_manifest

    job = tiny_config(
        data, method="full", packing=True, max_steps=1, eval_steps=1, save_steps=1, learning_rate=1e-4
    ).model_dump(mode="json")
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump(job))
    assert main(["train", str(path)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1]
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["packing"] == "True"
    assert float(run.data.tags[A.TAG_TRAINABLE_SHARE]) == 1.0 and A.TAG_LORA_R not in run.data.tags
    local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "dl"))
    assert "model.safetensors" in verify_manifest(Path(local))["files"]


def test_a_job_killed_with_sigkill_resumes_from_its_last_complete_checkpoint(home, data, models_dir, tmp_path):
    """The real thing: ``ftops train`` in its own process, SIGKILLed right after a checkpoint appears (possibly while
    it is still being written), then ``ftops train ... resume=RUN_ID``: same run, same final step, and a final loss
    within tolerance of the same job run without interruption."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import mlflow
    import yaml

    from ftops import settings
    from ftops.training.job import checkpoints_dir, train

    steps = 8  # killed after checkpoint-4 (checkpoint-2 complete), resumed for the steps after it
    config = tiny_config(data, max_steps=steps, eval_steps=steps, save_steps=2, run_name="sigkill")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = {**os.environ, "FTOPS_HOME": str(home), "FTOPS_MODELS": str(models_dir)}
    env.pop("MLFLOW_TRACKING_URI", None)
    before = set(checkpoints_dir("x").parent.glob("*")) if checkpoints_dir("x").parent.is_dir() else set()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftops.cli", "train", str(job)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_dir = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        new = set(checkpoints_dir("x").parent.glob("*")) - before if checkpoints_dir("x").parent.is_dir() else set()
        if new and (next(iter(new)) / "checkpoint-4").exists():
            run_dir = next(iter(new))
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert run_dir is not None and proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    run_id = run_dir.name
    settings.configure_mlflow()
    client = mlflow.MlflowClient()
    assert client.get_run(run_id).info.status == "RUNNING"  # killed: nobody marked it
    assert not (run_dir / f"checkpoint-{steps}").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "ftops.cli", "train", str(job), f"resume={run_id}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.strip().splitlines()[-1] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    loss = {m.step: m.value for m in client.get_metric_history(run_id, "loss")}
    assert max(loss) == steps

    reference = train(config.model_copy(update={"run_name": "uninterrupted"}))
    ref_loss = {m.step: m.value for m in client.get_metric_history(reference, "loss")}
    assert loss[steps] == pytest.approx(ref_loss[steps], rel=0.02, abs=0.02)


def test_resume_skips_a_checkpoint_cut_short(tmp_path, capsys):
    from ftops.training.job import last_complete_checkpoint

    for step, state in ((2, "{}"), (4, '{"global_step": 4}'), (6, '{"global_st'), (8, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    err = capsys.readouterr().err
    assert "checkpoint-8 is incomplete" in err and "checkpoint-6 is incomplete" in err
    assert last_complete_checkpoint(tmp_path / "none") is None


_FREE_AFTER_MALLOC = """
import ctypes, os, sys
from ftops.training.job import host_memory_kept, keep_host_memory
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
if sys.argv[1] == "keep":
    assert keep_host_memory()
elif sys.argv[1] == "restored":  # kept for a training, then released
    with host_memory_kept() as applied:
        assert applied
size = 256 << 20
block = libc.malloc(size)
ctypes.memset(block, 1, size)
before = rss()
libc.free(block)
print(before - rss())
"""


@pytest.mark.parametrize("mode", ["keep", "default", "restored"])
def test_keep_host_memory_keeps_a_freed_block_for_the_next_step(mode):
    """``keep_host_memory: true`` (the default; ``train`` applies it for its own duration): a freed 256 MiB block
    stays with the process for reuse; with glibc's defaults, and again after the training, it goes back to the OS
    at once (and would be faulted in again)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FREE_AFTER_MALLOC, mode], capture_output=True, text=True, check=True)
    released = int(out.stdout.strip())
    if mode == "keep":
        assert released < 16 << 20, released
    else:
        assert released > 200 << 20, released
