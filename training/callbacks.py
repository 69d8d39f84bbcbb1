"""Trainer callbacks for what transformers' built-in reporting lacks: training tokens/s, a progress bar that shows
loss and tokens/s, and the loss-curve PNG. Per-step loss, learning rate, eval loss and token accuracy go to MLflow
through transformers' own ``MLflowCallback``."""

from __future__ import annotations

import os
import time

from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.integrations import MLflowCallback


class MlflowMetrics(MLflowCallback):
    """transformers' MLflow reporting of every logged metric into the run ftops opened. Params are not logged here:
    the run's params are the resolved ftops config (the TrainingArguments go in as ``training_args.json``)."""

    def setup(self, args, state, model):
        # MLflowCallback.setup reads MLFLOW_MAX_LOG_PARAMS: "0" logs none of its ~200 TrainingArguments params.
        saved = os.environ.get("MLFLOW_MAX_LOG_PARAMS")
        os.environ["MLFLOW_MAX_LOG_PARAMS"] = "0"
        try:
            super().setup(args, state, model)
        finally:
            if saved is None:
                os.environ.pop("MLFLOW_MAX_LOG_PARAMS", None)
            else:
                os.environ["MLFLOW_MAX_LOG_PARAMS"] = saved


class TokensPerSecond(TrainerCallback):
    """Adds ``tokens_per_second`` (non-padding input tokens over time spent in training steps, not in eval or
    checkpointing) to every training log, so MLflow, the progress bar and ``log_history`` all see it.

    Must come before the callbacks that read the logs. Needs ``include_num_input_tokens_seen="non_padding"``."""

    def __init__(self) -> None:
        self.step_seconds = 0.0
        self.total_seconds = 0.0
        self.total_tokens = 0
        self._t0: float | None = None
        self._tokens_at_log = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._tokens_at_log = state.num_input_tokens_seen  # non-zero when resuming

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t0 is not None:
            dt = time.perf_counter() - self._t0
            self.step_seconds += dt
            self.total_seconds += dt
            self._t0 = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        tokens = state.num_input_tokens_seen - self._tokens_at_log
        if self.step_seconds > 0 and tokens > 0:
            logs["tokens_per_second"] = round(tokens / self.step_seconds, 2)
        self.total_tokens += tokens
        self._tokens_at_log = state.num_input_tokens_seen
        self.step_seconds = 0.0

    @property
    def mean_tokens_per_second(self) -> float:
        return self.total_tokens / self.total_seconds if self.total_seconds else 0.0


class ProgressBar(TrainerCallback):
    """A tqdm bar over optimizer steps with the latest loss and tokens/s (replaces transformers' own bar, which
    shows neither)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.enabled and state.is_world_process_zero:
            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        shown = {}
        if "loss" in logs:
            shown["loss"] = f"{logs['loss']:.4f}"
        if "tokens_per_second" in logs:
            shown["tok/s"] = f"{logs['tokens_per_second']:.0f}"
        if "eval_loss" in logs:
            shown["eval_loss"] = f"{logs['eval_loss']:.4f}"
        if shown:
            self.bar.set_postfix(shown, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def loss_curve(log_history: list[dict]):
    """A matplotlib figure of train loss (and validation loss where evaluated) against the optimizer step."""
    import matplotlib  # heavy, and only the end of a job draws: imported here, its Agg backend set before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h and "step" in h]
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
