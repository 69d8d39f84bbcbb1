"""Replay data: general prompts answered by the base itself, mixed into training against forgetting.

The prompts never repeat a regression-suite item, nor share its templates or entities (retention must be measured
on unseen items; ``test_retention_families.py``); ``ftops data replay``
answers them with the real SmolLM2 base; a training run with ``data.replay`` trains on both and logs the replay set.
"""

from __future__ import annotations

import json

import pytest

from ftops.expectations.regression import load_suite
from ftops.expectations.replay import replay_prompts


def _suite_prompts() -> set[str]:
    return {m["content"] for item in load_suite() for m in item["messages"] if m["role"] == "user"}


def test_prompts_are_deterministic_distinct_and_disjoint_from_the_regression_suite():
    suite = _suite_prompts()
    prompts = replay_prompts(10_000, exclude=suite)
    assert len(prompts) == len(set(prompts)) > 150
    assert not {p.lower() for p in prompts} & {s.lower() for s in suite}
    assert replay_prompts(50, exclude=suite) == replay_prompts(50, exclude=suite)
    assert replay_prompts(50, seed=1, exclude=suite) != replay_prompts(50, exclude=suite)
    # exclusion compares ignoring case and spacing, so the check above can fail without it
    pool = replay_prompts(10_000)
    assert len(replay_prompts(10_000, exclude={"  " + pool[0].upper()})) == len(pool) - 1


def test_cli_writes_the_base_answers_as_valid_chat_jsonl(ftops_home, smollm2, tmp_path, capsys):
    from ftops.cli import main
    from ftops.expectations.validate import validate_file

    out = tmp_path / "replay.jsonl"
    assert main(["data", "replay", str(out), "--base", smollm2.name, "-n", "6", "--max-new-tokens", "40"]) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert f"wrote {len(rows)} replay examples" in printed and 1 <= len(rows) <= 6
    prompts = replay_prompts(6, exclude=_suite_prompts())
    for row in rows:
        user, assistant = row["messages"]
        assert user == {"role": "user", "content": user["content"]} and user["content"] in prompts
        assert assistant["role"] == "assistant" and assistant["content"].strip()
    report = validate_file(out)  # line-level checks pass; six rows are below the file-level minimum of ten
    assert [e.code for e in report.errors] == ["too_few_examples"] and len(report.examples) == len(rows)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-n", "0"], "-n must be at least 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be between 1 and 4096"),
        (["--base", "../etc"], "base model name"),
        (["--base", "never-imported"], "'never-imported' is not imported"),
    ],
)
def test_cli_refuses_bad_arguments_with_one_line(argv, message, ftops_home, tmp_path, capsys):
    from ftops.cli import main

    out = tmp_path / "replay.jsonl"
    assert main(["data", "replay", str(out), *argv]) in (1, 2)
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()


class TrainSetSize:
    """A TrainerCallback that records how many examples the Trainer trains on."""

    def __getattr__(self, name):  # every other event: nothing to do
        return lambda *args, **kwargs: None

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.size = len(train_dataloader.dataset)


def test_training_mixes_replay_in_and_logs_it(ftops_home, tiny_base, tmp_path):
    import mlflow

    from ftops import adapter as A
    from ftops.training.config import TrainConfig
    from ftops.training.job import train

    def write(name: str, rows: list[dict]) -> str:
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    def chat(user: str, answer: str) -> dict:
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}

    data = {
        name: write(name, [chat(f"{name} ticket {i}", json.dumps({"id": i})) for i in range(n)])
        for name, n in (("train", 12), ("validation", 10), ("test", 10))
    }
    data["replay"] = write("replay", [chat(p, "An answer.") for p in replay_prompts(10)])
    config = TrainConfig.model_validate(
        {
            "base": "tiny-llama",
            "data": data,
            "method": "lora",
            "max_steps": 1,
            "batch_size": 2,
            "eval_steps": 1,
            "save_steps": 1,
            "max_seq_length": 128,
            "progress": False,
            "lora": {"r": 4, "target_modules": ["q_proj"]},
        }
    )
    seen = TrainSetSize()
    run_id = train(config, callbacks=[seen])
    assert seen.size == 12 + 10
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.data.metrics["data.replay.examples"] == 10 and run.data.metrics["data.train.examples"] == 12
    assert run.data.params["data.replay"] == data["replay"]
    assert len(run.data.tags[f"{A.TAG_DATASET_PREFIX}replay.digest"]) == 64
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {"train", "validation", "test", "replay"}
    logged = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/data/replay.jsonl", dst_path=str(tmp_path / "dl"))
    assert len(open(logged).read().splitlines()) == 10

    # a replay file that is missing stops before any run, naming the command that writes one
    from ftops.errors import FtopsError

    with pytest.raises(FtopsError, match="data.replay: .*no such file; run `ftops data replay"):
        train(config.model_copy(update={"data": config.data.model_copy(update={"replay": tmp_path / "none.jsonl"})}))
