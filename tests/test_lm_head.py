"""The LM head scores only labelled positions (``training/lm_head.py``) and computes exactly what TRL's full-position
head computes: same loss, token accuracy, entropy and LoRA gradients. On the tiny random Llama with the real tokenizer.
"""

from __future__ import annotations

import json

import pytest
from conftest import tiny_trainer


def _chat(i: int) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": f"Give the number {i} and its square, please, in a JSON object."},
            {"role": "assistant", "content": json.dumps({"n": i, "square": i * i})},
        ]
    }


@pytest.fixture(scope="module")
def trainer(tiny_base, tmp_path_factory):
    from ftops.training.config import TrainConfig

    folder = tmp_path_factory.mktemp("lm-head-data")
    data = {}
    for name, offset in {"train": 0, "validation": 100}.items():
        data[name] = folder / f"{name}.jsonl"
        data[name].write_text("".join(json.dumps(_chat(i)) + "\n" for i in range(offset, offset + 12)))
    config = TrainConfig.model_validate(
        {
            "base": "tiny-llama",
            "data": {**{k: str(v) for k, v in data.items()}, "test": str(data["validation"])},
            "method": "lora",
            "max_seq_length": 256,
            "batch_size": 4,
            "max_steps": 1,
            "progress": False,
            "lora": {
                "r": 4,
                "dropout": 0.0,
                "target_modules": ["q_proj", "v_proj"],
            },  # no dropout: two passes comparable
        }
    )
    trainer, _, _ = tiny_trainer(config, tiny_base, data, tmp_path_factory.mktemp("out"))
    return trainer


def _step(trainer, batch) -> dict:
    """Loss, metrics and LoRA gradients of one forward/backward on ``batch``."""
    model = trainer.model.train()
    model.zero_grad()
    trainer._metrics["train"].clear()
    with trainer.accelerator.autocast():
        loss = trainer.compute_loss(model, trainer._prepare_inputs(dict(batch)))
    loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k in ("entropy", "mean_token_accuracy")}
    return {"loss": loss.item(), "grads": grads, **metrics}


def test_only_labelled_positions_are_scored_and_the_results_are_the_same(trainer, monkeypatch):
    import torch
    from trl.trainer import utils as trl_utils

    from ftops.training.lm_head import labelled_positions_only

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    positions = batch["labels"][:, 1:].numel()
    assert 0 < labelled < positions / 2  # most positions are prompt or padding: the case that pays

    rows = []
    inner = trl_utils._ChunkedLogProbFunction

    class Spy:  # records how many positions the head projects, then runs TRL's own function
        @staticmethod
        def apply(hidden, *args):
            rows.append(hidden.shape[0])
            return inner.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)
    full = _step(trainer, batch)
    with labelled_positions_only():
        compact = _step(trainer, batch)
    assert rows == [positions, labelled]

    assert compact["loss"] == pytest.approx(full["loss"], rel=1e-5)
    assert compact["mean_token_accuracy"] == pytest.approx(full["mean_token_accuracy"], abs=1e-6)
    assert compact["entropy"] == pytest.approx(full["entropy"], rel=1e-4)
    assert full["grads"] and full["grads"].keys() == compact["grads"].keys()
    assert any(g.abs().sum() > 0 for g in full["grads"].values())  # the comparison below compares something
    for name, grad in full["grads"].items():
        torch.testing.assert_close(compact["grads"][name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_the_hook_is_restored_after_the_block_even_on_error():
    from trl.trainer import utils as trl_utils

    from ftops.training.lm_head import labelled_positions_only

    original = trl_utils._use_triton
    with pytest.raises(KeyError), labelled_positions_only():
        assert trl_utils._use_triton is not original
        raise KeyError("boom")
    assert trl_utils._use_triton is original


def test_a_trl_without_the_hook_is_an_error_not_a_silent_slowdown(monkeypatch):
    from trl.trainer import utils as trl_utils

    from ftops.training.lm_head import labelled_positions_only

    monkeypatch.delattr(trl_utils, "_use_triton")
    with pytest.raises(RuntimeError, match="update training/lm_head.py"), labelled_positions_only():
        pass
