"""The training job's config and its checks: every YAML in configs/ loads, overrides work, bad input is one line.
No training here (see test_train.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ftops.errors import FtopsError, UsageError
from ftops.training.config import TrainConfig, load_config, parse_overrides

REPO = Path(__file__).resolve().parents[1]
JOB_CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml"))


def test_configs_exist():
    assert {p.name for p in JOB_CONFIGS} >= {"demo.yaml"}


@pytest.mark.parametrize("path", JOB_CONFIGS, ids=lambda p: p.name)
def test_every_job_yaml_loads_and_starts_with_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and "ftops " in first, f"{path.name}: first line must be the command that runs it"
    config = load_config(path)
    assert config.base == "smollm2-135m-instruct"
    assert config.method == "qlora" and config.assistant_only_loss


def test_multi_gpu_accelerate_config_is_valid():
    from accelerate.commands.config.config_args import load_config_from_file

    path = REPO / "configs" / "accelerate" / "multi_gpu.yaml"
    first = path.read_text().splitlines()[0]
    assert first.startswith("# accelerate launch --config_file configs/accelerate/multi_gpu.yaml")
    cluster = load_config_from_file(str(path))  # accelerate's own parser: a bad key or value raises here
    assert str(cluster.distributed_type).endswith("MULTI_GPU")
    assert cluster.num_processes > 1 and cluster.num_machines == 1
    assert str(cluster.mixed_precision) == "bf16" and not cluster.use_cpu
    # the job it launches exists and loads
    gpu = load_config(REPO / "configs" / "gpu.yaml")
    assert gpu.method == "qlora"


def test_overrides_nest_and_parse_yaml_scalars(tmp_path):
    path = REPO / "configs" / "demo.yaml"
    config = load_config(
        path,
        [
            "lora.r=4",
            "packing=true",
            "max_steps=3",
            "lora.target_modules=q_proj,v_proj",
            "learning_rate=1e-3",
            "run_name=x",
        ],
    )
    assert config.lora.r == 4 and config.packing is True and config.max_steps == 3
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.learning_rate == pytest.approx(1e-3)
    assert config.lora.alpha == load_config(path).lora.alpha  # untouched siblings keep their value
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


MINIMAL = "base: tiny-llama\ndata: {train: a.jsonl, validation: b.jsonl, test: c.jsonl}\n"


def test_unknown_key_in_yaml_is_one_line_naming_it(tmp_path):
    with pytest.raises(FtopsError) as e:
        load_config(_write(tmp_path, MINIMAL + "lora: {r: 8, rank: 8}\n"))
    msg = str(e.value)
    assert "unknown key 'lora.rank'" in msg and "job.yaml" in msg and "\n" not in msg
    assert not isinstance(e.value, UsageError)  # a bad file: exit 1


@pytest.mark.parametrize(
    "override, needle",
    [
        ("nope=1", "unknown key 'nope'"),
        ("lora.r=0", "lora.r"),
        ("method=int8", "method"),
        ("justakey", "expected key=value"),
        ("resume=../../x", "not an MLflow run id"),
        ("base=../evil", "base"),
    ],
)
def test_bad_override_is_a_usage_error(tmp_path, override, needle):
    with pytest.raises(UsageError) as e:
        load_config(_write(tmp_path, MINIMAL), [override])
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("base: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("data: {train: a, validation: b, test: c}\n", "missing required key 'base'"),
        (MINIMAL + "epochs: -1\n", "epochs"),
    ],
)
def test_bad_yaml_is_one_line(tmp_path, text, needle):
    with pytest.raises(FtopsError) as e:
        load_config(_write(tmp_path, text))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_params_are_flat_strings_without_resume():
    config = TrainConfig.model_validate(yaml.safe_load(MINIMAL) | {"resume": "abc123"})
    params = config.to_params()
    assert params["lora.r"] == "16" and params["data.train"] == "a.jsonl" and params["method"] == "qlora"
    assert "resume" not in params and all(isinstance(v, str) for v in params.values())


def test_every_field_has_a_docstring():
    for model in (
        TrainConfig,
        TrainConfig.model_fields["lora"].annotation,
        TrainConfig.model_fields["data"].annotation,
    ):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"


def test_cli_usage_error_exits_2_and_bad_file_exits_1(tmp_path, capsys):
    from ftops.cli import main

    assert main(["train", str(_write(tmp_path, MINIMAL)), "nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ftops train: error:") and "unknown key 'nope'" in err and "\n" not in err
    assert main(["train", str(_write(tmp_path, MINIMAL + "bogus: 1\n"))]) == 1
    err = capsys.readouterr().err.strip()
    assert "unknown key 'bogus'" in err and "\n" not in err


AVX2_EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"), [(AVX2_EPYC, False), (SAPPHIRE, True), (GRAVITON3, True), ("", False), ("garbage", False)]
)
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native):
    from ftops.precision import cpu_has_native_bf16

    assert cpu_has_native_bf16(cpuinfo) is native


def test_precision_sets_the_compute_dtype_and_the_lineage_tag(tmp_path):
    from ftops.precision import resolve

    data = {k: tmp_path / f"{k}.jsonl" for k in ("train", "validation", "test")}
    config = TrainConfig(base="b", data=data)
    assert config.precision == "auto" and resolve() in ("bf16", "fp32")
    assert config.quantization == f"nf4-double-quant-{resolve()}"
    assert TrainConfig(base="b", data=data, precision="fp32").quantization == "nf4-double-quant-fp32"
    assert TrainConfig(base="b", data=data, method="lora", precision="bf16").quantization == "bf16"
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(base="b", data=data, precision="fp8")
