"""Packing keeps examples apart: a packed row computes exactly what its examples compute one by one.

TRL packs examples into rows (best-fit decreasing); on CPU ftops keeps the rows as rows (``training/packing.py``)
instead of flattening the batch into one long sequence. Checked on the tiny random Llama with the real tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_trainer


def _chat(i: int) -> dict:
    words = " ".join(["word"] * (i % 5 + 1))
    return {
        "messages": [
            {"role": "user", "content": f"Repeat {words} {i} times."},
            {"role": "assistant", "content": json.dumps({"n": i, "text": words})},
        ]
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("packing-data")
    paths = {}
    for name, (n, offset) in {"train": (24, 0), "validation": (10, 100), "test": (10, 200)}.items():
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(_chat(i)) + "\n" for i in range(offset, offset + n)))
    return paths


@pytest.fixture(scope="module")
def packed_trainer(data, tiny_base, tmp_path_factory):
    from ftops.training.config import TrainConfig

    config = TrainConfig.model_validate(
        {
            "base": "tiny-llama",
            "data": {k: str(v) for k, v in data.items()},
            "method": "lora",
            "packing": True,
            "max_seq_length": 256,
            "batch_size": 2,
            "max_steps": 1,
            "progress": False,
            "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
        }
    )
    trainer, tokenizer, _ = tiny_trainer(config, tiny_base, data, tmp_path_factory.mktemp("out"))
    return trainer, tokenizer


def test_rows_hold_several_examples_and_stay_separate_rows(packed_trainer):
    from ftops.training.packing import PackedRowsCollator

    trainer, _ = packed_trainer
    assert isinstance(trainer.data_collator, PackedRowsCollator)
    rows = [trainer.train_dataset[i] for i in range(2)]
    assert all(len(r["seq_lengths"]) > 1 for r in rows)  # several examples per row
    batch = trainer.data_collator(rows)
    assert batch["input_ids"].shape == (
        2,
        max(len(r["input_ids"]) for r in rows),
    )  # rows, not one flat sequence
    assert "attention_mask" not in batch
    for i, r in enumerate(rows):
        starts = [0, *[sum(r["seq_lengths"][:k]) for k in range(1, len(r["seq_lengths"]))]]
        assert (batch["position_ids"][i, starts] == 0).all()
        assert (batch["labels"][i, starts] == -100).all()


def test_a_packed_row_computes_what_its_examples_compute_alone(packed_trainer):
    """Logits of every token of a packed row equal those of its example run on its own: no attention across."""
    import torch

    trainer, _ = packed_trainer
    model = trainer.model.eval()
    row = trainer.train_dataset[0]
    batch = trainer.data_collator([row])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0].float()
        start = 0
        for length in row["seq_lengths"]:
            ids = torch.tensor([row["input_ids"][start : start + length]])
            alone = model(input_ids=ids).logits[0].float()
            torch.testing.assert_close(packed[start : start + length], alone, atol=2e-2, rtol=2e-2)
            start += length
        # the check can fail: the same row with a plain causal mask (what the attention mask would give) differs
        leaky = model(input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["input_ids"])).logits[0]
        last = row["seq_lengths"][-1]
        assert not torch.allclose(leaky[-last:].float(), packed[-last:], atol=2e-2, rtol=2e-2)


def test_labels_of_a_packed_row_are_the_assistant_answers(packed_trainer, data):
    trainer, tokenizer = packed_trainer
    row = trainer.train_dataset[0]
    batch = trainer.data_collator([row])
    kept = tokenizer.decode(batch["input_ids"][0][batch["labels"][0] != -100])
    answers = [json.loads(line)["messages"][-1]["content"] for line in data["train"].read_text().splitlines()]
    parts = [p for p in kept.split("<|im_end|>") if p]
    assert len(parts) == len(row["seq_lengths"]) and all(p in answers for p in parts)
