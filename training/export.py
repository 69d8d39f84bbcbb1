"""``ftops export RUN_ID --merged OUT``: the run's adapter merged into its base (``merge_and_unload``), saved as a
plain safetensors model folder with a sha256 manifest, for runtimes that cannot apply LoRA at load time."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ftops import settings
from ftops.adapter import ARTIFACT_PATH, check_base, download_adapter
from ftops.base import load_base
from ftops.errors import FtopsError
from ftops.manifest import write_manifest


def export_merged(run_id: str, out: Path) -> Path:
    """Merge run ``run_id``'s adapter into its base in bf16 and write the model to ``out`` (which must not exist or
    be empty). Checks the adapter's manifest and that the imported base is the one it was trained on."""
    # heavy: imported on use, so that importing this module (the CLI does) stays fast
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FtopsError(f"{out}: exists and is not an empty folder; choose a new output folder")
    if not run_id.isalnum():
        raise FtopsError(f"{run_id!r} is not an MLflow run id (as `ftops train` printed it)")
    settings.configure_mlflow()
    with tempfile.TemporaryDirectory(prefix="ftops-export-") as tmp:
        folder, manifest = download_adapter(f"runs:/{run_id}/{ARTIFACT_PATH}", Path(tmp))
        base = load_base(manifest["base"]["name"])
        check_base(f"run {run_id}'s adapter", manifest["base"], base)
        model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.bfloat16)
        merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        staging = Path(tmp) / "merged"
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        for p in staging.iterdir():
            if p.name == "README.md":
                p.unlink()
        write_manifest(
            staging,
            {
                "base": manifest["base"],
                "merged_from": {"run_id": run_id, "lora": manifest.get("lora")},
                "quantization": "bf16",
            },
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        shutil.move(str(staging), str(out))
    return out
