"""Packing that pays on a CPU: TRL packs examples into rows (best-fit decreasing), ftops keeps the rows apart.

With ``packing=True`` TRL's ``SFTTrainer`` packs whole examples into rows of up to ``max_length`` tokens and then,
being padding-free, concatenates *all rows of a batch into one sequence*. That is right for FlashAttention's varlen
kernels on a GPU. Elsewhere (PyTorch SDPA on a CPU) the attention is computed densely over that one long sequence
with a block mask: a batch of 8 rows of 256 tokens costs attention over 2048 x 2048 instead of 8 x 256 x 256, and
packing came out 0.71x *slower* than no packing here (BENCHMARKS.md, "Training").

:class:`PackedRowsCollator` keeps each packed row a row of its own: position ids restart at every example, no
attention mask is passed, and transformers derives a block-causal mask from the position ids
(``masking_utils.find_packed_sequence_indices``), so no token attends across examples. Labels of each example's
first token are masked, as TRL does, since the token before it belongs to another example.
"""

from __future__ import annotations

from typing import Any


class PackedRowsCollator:
    """Collate TRL-packed rows (``input_ids``, ``labels``, ``seq_lengths``) into a padded batch of separate rows."""

    def __init__(self, pad_token_id: int):
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling  # heavy: on use only

        self.inner = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, return_position_ids=True)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(examples)
        batch.pop("attention_mask")  # with it, transformers would let every token see the whole row
        batch["labels"][batch["position_ids"] == 0] = -100
        return batch


def use_packed_rows(trainer) -> None:
    """Swap a packing ``SFTTrainer``'s flattening collator for :class:`PackedRowsCollator`. The job does so unless
    the model runs a FlashAttention implementation, whose varlen kernels make TRL's padding-free batches the fast
    path."""
    trainer.data_collator = PackedRowsCollator(trainer.processing_class.pad_token_id)
