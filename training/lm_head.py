"""The LM head scores only the positions that have a label, on every device.

TRL's ``SFTTrainer`` computes the loss with a fused LM head (``trl.trainer.utils.add_fused_lm_head``): the vocabulary
projection and log-softmax run in tiles without materializing the ``(batch, seq, vocab)`` logits. On CUDA/XPU with
Triton it projects only the positions whose label is not ``-100``; on any other device it projects *every* position,
prompt and padding included, so that compilers such as Neuron's see the same tile shapes on every batch. Eager
PyTorch on a CPU recompiles nothing, and with the loss on assistant tokens only most positions carry no label: on
SmolLM2's 49,152-token vocabulary the head is then a large share of a step spent on numbers that are multiplied by
zero.

:func:`labelled_positions_only` makes TRL's head take its compact path on every device while the block runs. The
loss, token accuracy, entropy and gradients are the same (``tests/test_lm_head.py``); a bf16 LoRA step on the demo
tickets took 25.4 s instead of 32.3 s here (BENCHMARKS.md, "Training").
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator


@contextlib.contextmanager
def labelled_positions_only() -> Iterator[None]:
    """While the block runs, TRL's fused LM head projects only labelled positions, whatever the device.

    TRL makes the choice with ``trl.trainer.utils._use_triton(device)`` at each forward; it is swapped for one that
    answers yes on devices without Triton too (the head's tile loop then runs as torch ops, exactly as it does for the
    full positions). Raises if the pinned TRL no longer has that hook, so a TRL upgrade cannot drop it silently."""
    from trl.trainer import utils as trl_utils  # heavy: on use only (training/job.py imports this module)

    original = getattr(trl_utils, "_use_triton", None)
    if original is None or "_use_triton(hidden_states.device)" not in inspect.getsource(trl_utils.add_fused_lm_head):
        raise RuntimeError(
            "trl.trainer.utils.add_fused_lm_head no longer decides with _use_triton(device); "
            "update training/lm_head.py for this TRL version"
        )
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._use_triton = original
