"""Foundation: base model import, manifests, and the real SmolLM2 answering."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ftops.base import import_base, list_bases, load_base
from ftops.errors import FtopsError, UsageError
from ftops.manifest import verify_manifest

FTOPS = [sys.executable, "-m", "ftops.cli"]


def run_ftops(*args: str, env_models: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "FTOPS_MODELS": str(env_models), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*FTOPS, *args], capture_output=True, text=True, env=env, timeout=300)


def test_smollm2_answers_paris_with_greedy_decoding(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    smollm2.verify()
    tokenizer = AutoTokenizer.from_pretrained(smollm2.path)
    model = AutoModelForCausalLM.from_pretrained(smollm2.path, dtype=torch.float32)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_smollm2_record_describes_the_weights(smollm2):
    assert smollm2.architecture == "LlamaForCausalLM"
    assert 130e6 < smollm2.num_parameters < 140e6
    assert smollm2.context_length == 8192
    assert "<|im_start|>" in (smollm2.chat_template or "")
    assert set(smollm2.files) >= {"model.safetensors", "config.json", "tokenizer.json"}
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in smollm2.files)


def test_hf_folder_import_is_idempotent(tiny_base, tmp_path, models_dir):
    again, created = import_base(tiny_base.source, "tiny-llama", models_dir)
    assert not created and again.sha256 == tiny_base.sha256
    assert load_base("tiny-llama", models_dir).sha256 == tiny_base.sha256
    # the same folder under another name is a new record with the same weights digest
    other, created = import_base(tiny_base.source, "tiny-copy", tmp_path / "m")
    assert created and other.sha256 == tiny_base.sha256


def test_same_name_from_another_source_is_refused(tiny_base, tmp_path, models_dir):
    src = tmp_path / "other"
    src.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (src / name).write_bytes(Path(tiny_base.path, name).read_bytes())
    (src / "config.json").write_text(Path(tiny_base.path, "config.json").read_text().replace("128", "128 "))
    with pytest.raises(FtopsError, match="another source"):
        import_base(src, "tiny-llama", models_dir)


@pytest.mark.parametrize("case", ["missing", "empty-dir", "text-file", "binary-file", "pickle-only", "no-config"])
def test_import_of_non_models_exits_1_with_one_line_and_registers_nothing(case, tmp_path):
    models = tmp_path / "models"
    target = tmp_path / case
    if case == "empty-dir":
        target.mkdir()
    elif case == "text-file":
        target.write_text("hello, I am not a model\n")
    elif case == "binary-file":
        target.write_bytes(bytes(range(256)) * 100)
    elif case == "pickle-only":
        target.mkdir()
        (target / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (target / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    elif case == "no-config":
        target.mkdir()
        (target / "notes.txt").write_text("x")
    result = run_ftops("base", "import", str(target), "--name", "x", env_models=models)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ftops base: error:"), result.stderr
    assert "Traceback" not in result.stderr
    assert list_bases(models) == []
    assert not any(p for p in models.glob("*") if not p.name.startswith(".")) if models.exists() else True


def test_pickle_only_folder_says_why(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(FtopsError, match="pickle formats are refused"):
        import_base(tmp_path, "p", tmp_path / "models")


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "", "x" * 200, "-lead", "name with space"])
def test_hostile_names_are_refused(name, tiny_base, tmp_path):
    with pytest.raises(UsageError):
        import_base(tiny_base.source, name, tmp_path)
    with pytest.raises(UsageError):
        load_base(name, tmp_path)


def test_unknown_base_says_how_to_import(tmp_path):
    with pytest.raises(FtopsError, match="ftops base import"):
        load_base("nope", tmp_path)


def test_tampered_weights_fail_verification(tiny_base, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_base.path, copy)
    verify_manifest(copy)
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(FtopsError, match="sha256 does not match"):
        verify_manifest(copy)
    (copy / "evil.pkl").write_bytes(b"x")
    with pytest.raises(FtopsError, match="refusing file type"):
        verify_manifest(copy)
