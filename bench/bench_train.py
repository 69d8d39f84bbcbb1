"""Training throughput and peak memory: ftops ``train()`` against a plain TRL ``SFTTrainer`` script with the same
settings, in one run, plus what packing and gradient checkpointing change.

    .venv/bin/python bench/bench_train.py                       # all cases on SmolLM2-135M, 8 steps each
    .venv/bin/python bench/bench_train.py --steps 4 --cases qlora,lora
    .venv/bin/python bench/bench_train.py --cases lora,packing --replay .ftops/demo/data/replay.jsonl

Every case runs in its own subprocess (so peak RSS is that case's alone) on the demo tickets. Tokens/s is the same
measure on both sides: non-padding input tokens seen / (``train_runtime`` as the Trainer reports it minus the
``eval_runtime`` of its evaluations): everything ftops adds in callbacks (MLflow logging, tokens/s, progress bar) is
inside that time, the evaluation on the validation split (the same on both sides) is not.

Prints a table and the ratios ftops/plain (>= 1.0 means ftops is not slower), packing/no packing, and QLoRA
with/without gradient checkpointing; paste it into BENCHMARKS.md. The case ``overhead`` runs ftops with TRL's own
LM head (every position scored, as the plain script does; ``training/lm_head.py``), so its ratio isolates what ftops
adds around the same computation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: name -> (side, method, packing, gradient_checkpointing)
CASES = {
    "qlora": [("ftops", "qlora", False, True), ("plain", "qlora", False, True)],
    "lora": [("ftops", "lora", False, False), ("plain", "lora", False, False)],
    "packing": [("ftops", "lora", True, False)],
    # ftops's own overhead (MLflow, callbacks, validation) without its faster LM head: TRL's head on both sides
    "overhead": [("ftops-trl-head", "lora", False, False), ("plain", "lora", False, False)],
    "qlora-nogc": [("ftops", "qlora", False, False)],
}


def make_data(folder: Path, replay: Path | None = None) -> dict[str, Path]:
    """The demo tickets split 80/10/10; with ``replay``, its examples are appended to the training split (what the
    demo trains on: tickets plus the base's answers to general prompts), the same file for both sides."""
    from ftops.expectations.demo_data import write_tickets
    from ftops.expectations.split import split_file

    src = write_tickets(folder / "tickets.jsonl", n=400, seed=0)
    paths = {k: Path(v) for k, v in split_file(src, folder / "split").items()}
    if replay is not None:
        with paths["train"].open("a", encoding="utf-8") as train:
            train.write(replay.read_text(encoding="utf-8"))
    # evaluation is not what is measured: the smallest validation split the data contract accepts keeps it short
    lines = paths["validation"].read_text().splitlines(keepends=True)
    paths["validation"].write_text("".join(lines[:10]))
    return paths


def config_for(base: str, data: dict[str, Path], method: str, packing: bool, gc: bool, steps: int, batch: int):
    from ftops.training.config import TrainConfig

    return TrainConfig(
        base=base,
        data={k: str(v) for k, v in data.items()},
        method=method,
        packing=packing,
        gradient_checkpointing=gc,
        max_steps=steps,
        batch_size=batch,
        max_seq_length=256,
        learning_rate=2e-4,
        lr_scheduler="constant",
        eval_steps=10_000,
        save_steps=10_000,
        logging_steps=1,
        seed=0,
        progress=False,
        lora={"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    )


def run_ftops(config) -> dict:
    import mlflow

    from ftops.training.job import train

    run_id = train(config)
    client = mlflow.MlflowClient()
    metrics = client.get_run(run_id).data.metrics
    evals = sum(m.value for m in client.get_metric_history(run_id, "eval_runtime"))
    return {"tokens": metrics["num_input_tokens_seen"], "runtime": metrics["train_runtime"] - evals}


def run_plain(config) -> dict:
    """The plain TRL script: what a user would write by hand for the same job (no MLflow, no ftops)."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from ftops.base import load_base
    from ftops.training.chat_template import training_chat_template

    base = load_base(config.base)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    tokenizer.chat_template = training_chat_template(tokenizer, base.name)  # SmolLM2's template lacks the markers
    quant = None
    if config.method == "qlora":
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.bfloat16, quantization_config=quant)
    files = {"train": str(config.data.train), "validation": str(config.data.validation)}
    ds = load_dataset("json", data_files=files)
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,
            max_steps=config.max_steps,
            learning_rate=config.learning_rate,
            lr_scheduler_type="constant",
            per_device_train_batch_size=config.batch_size,
            per_device_eval_batch_size=config.batch_size,
            max_length=config.max_seq_length,
            packing=config.packing,
            assistant_only_loss=True,
            gradient_checkpointing=config.gradient_checkpointing,
            bf16=True,
            use_cpu=True,
            eval_strategy="steps",
            eval_steps=config.eval_steps,
            save_steps=config.save_steps,
            logging_steps=1,
            seed=config.seed,
            report_to="none",
            include_num_input_tokens_seen="non_padding",
            disable_tqdm=True,
        )
        lora = LoraConfig(
            r=config.lora.r,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=list(config.lora.target_modules),
            task_type="CAUSAL_LM",
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=ds["train"],
            eval_dataset=ds["validation"],
            processing_class=tokenizer,
            peft_config=lora,
        )
        result = trainer.train()
    evals = sum(h["eval_runtime"] for h in trainer.state.log_history if "eval_runtime" in h)
    return {"tokens": trainer.state.num_input_tokens_seen, "runtime": result.metrics["train_runtime"] - evals}


def child(spec: dict) -> None:
    """One case, in this process: print one JSON line with tokens/s and peak RSS."""
    config = config_for(
        spec["base"],
        {k: Path(v) for k, v in spec["data"].items()},
        spec["method"],
        spec["packing"],
        spec["gc"],
        spec["steps"],
        spec["batch"],
    )
    if spec["side"] == "ftops-trl-head":  # the job as it is, but TRL's LM head scores every position
        import contextlib

        import ftops.training.job

        ftops.training.job.labelled_positions_only = contextlib.nullcontext
    figures = run_plain(config) if spec["side"] == "plain" else run_ftops(config)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        "RESULT "
        + json.dumps({**figures, "tokens_per_second": figures["tokens"] / figures["runtime"], "peak_rss_mb": peak_mb}),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every case this many times, sides alternating which goes first; ratios of medians",
    )
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument(
        "--replay",
        type=Path,
        metavar="JSONL",
        help="mix these replay examples into the training split (the demo's .ftops/demo/data/"
        "replay.jsonl: `ftops data replay` output)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("FTOPS_MODELS", str(REPO / ".ftops" / "models"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        env = {**os.environ, "FTOPS_HOME": str(Path(tmp) / "home"), "TOKENIZERS_PARALLELISM": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        data = make_data(Path(tmp), args.replay)
        # with --repeat the sides alternate which goes first (AB BA ...): this machine drifts by +-10% over minutes
        jobs = [
            (case, spec)
            for rep in range(args.repeat)
            for case in args.cases.split(",")
            for spec in (CASES[case] if rep % 2 == 0 else CASES[case][::-1])
        ]
        for case, (side, method, packing, gc) in jobs:
            spec = {
                "side": side,
                "method": method,
                "packing": packing,
                "gc": gc,
                "steps": args.steps,
                "batch": args.batch,
                "base": args.base,
                "data": {k: str(v) for k, v in data.items()},
            }
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(spec)],
                env=env,
                capture_output=True,
                text=True,
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.exit(f"case {case}/{side} failed:\n{proc.stderr[-3000:]}")
            row = {
                "case": case,
                "side": side,
                "method": method,
                "packing": packing,
                "gc": gc,
                "wall_s": time.perf_counter() - t0,
                **json.loads(lines[-1][7:]),
            }
            rows.append(row)
            print(
                f"{case:11s} {side:14s} {method:6s} packing={packing!s:5s} gc={gc!s:5s} "
                f"{row['tokens_per_second']:7.1f} tok/s  peak {row['peak_rss_mb']:6.0f} MB  "
                f"({row['tokens']:.0f} tokens in {row['runtime']:.1f} s)",
                flush=True,
            )

    def tps(case, side):
        """The median tokens/s of a case's runs on one side (one run without --repeat)."""
        runs = [r["tokens_per_second"] for r in rows if r["case"] == case and r["side"] == side]
        return statistics.median(runs) if runs else None

    print(
        f"\nmachine: {platform.machine()} {os.cpu_count()} cores, {platform.python_version()}, "
        f"date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}; base {args.base}, "
        f"{args.steps} steps x batch {args.batch}, {args.repeat} run(s) per side, max_seq_length 256, "
        "LoRA r=16 q/k/v/o; data: demo tickets"
        + (f" + {sum(1 for _ in args.replay.open())} replay examples" if args.replay else "")
    )
    for case in ("qlora", "lora"):
        if tps(case, "ftops") and tps(case, "plain"):
            print(f"ratio ftops/plain {case}: {tps(case, 'ftops') / tps(case, 'plain'):.2f}")
    if tps("overhead", "ftops-trl-head") and tps("overhead", "plain"):
        print(
            f"ratio ftops with TRL's LM head/plain lora (ftops's overhead alone): "
            f"{tps('overhead', 'ftops-trl-head') / tps('overhead', 'plain'):.2f}"
        )
    if tps("packing", "ftops") and tps("lora", "ftops"):
        print(
            f"ratio packing/no packing (bf16 LoRA, effective tokens/s): "
            f"{tps('packing', 'ftops') / tps('lora', 'ftops'):.2f}"
        )
    if tps("qlora-nogc", "ftops") and tps("qlora", "ftops"):
        print(
            f"ratio QLoRA without/with gradient checkpointing: {tps('qlora-nogc', 'ftops') / tps('qlora', 'ftops'):.2f}"
        )


if __name__ == "__main__":
    main()
