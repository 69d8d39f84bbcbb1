"""``ftops advise``: every option on the tiny base with a real ``ftops serve`` as the hosted endpoint, the report's
arithmetic recomputed from the price tables, the ledger and the training run; and one clear line per bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from conftest import free_port, log_adapter_run
from test_serving import API_KEY, MODEL, served  # noqa: F401  (the module's real ftops serve on the tiny base)

REPO = Path(__file__).resolve().parents[1]
PRICES = yaml.safe_load((REPO / "costs" / "prices.yaml").read_text())
HARDWARE = yaml.safe_load((REPO / "costs" / "hardware.yaml").read_text())
HOURLY = HARDWARE["instances"][HARDWARE["default"]]["usd_per_hour"]
FT_ROW = "openai/ft:gpt-4o-mini"
BASE_ROW = "openai/gpt-4o-mini"


def tickets(n_train: int, n_test: int) -> tuple[list[dict], list[dict]]:
    """Demo tickets (system prompt, ticket, JSON answer): the first ``n_train`` to train on, the next ``n_test``
    held out."""
    from ftops.expectations.demo_data import generate_tickets

    rows = generate_tickets(n_train + n_test, seed=3)
    return rows[:n_train], rows[n_train:]


def write_split(folder: Path, train: list[dict], test: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def advise(argv: list[str], capsys) -> tuple[int, str, str]:
    from ftops.cli import main

    code = main(["advise", *argv])
    out, err = capsys.readouterr()
    return code, out, err


FAST = ["--engine", "transformers", "--max-new-tokens", "4", "--no-regression", "--batch-size", "2"]


# --------------------------------------------------------------------------------------------- bad input
def test_unknown_adapter_is_one_line(ftops_home, tmp_path, capsys):
    data = write_split(tmp_path / "data", *tickets(4, 2))
    code, out, err = advise([str(data), "--adapter", "no-such-model@production", *FAST], capsys)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        "ftops advise: error: unknown adapter no-such-model@production: the registry has no model no-such-model "
        "with alias @production; `ftops models` lists them"
    ]


@pytest.mark.parametrize("empty", ["train", "test"])
def test_empty_split_is_one_line(ftops_home, tmp_path, capsys, empty):
    train, test = tickets(4, 2)
    data = write_split(tmp_path / "data", [] if empty == "train" else train, [] if empty == "test" else test)
    code, out, err = advise([str(data), *FAST], capsys)
    assert code == 1 and out == ""
    what = "training" if empty == "train" else "held-out"
    assert err.strip().splitlines() == [
        f"ftops advise: error: the {what} split {data / (empty + '.jsonl')} is empty: advise needs held-out and "
        "training examples"
    ]


def test_k_larger_than_the_training_split_is_one_line(ftops_home, tmp_path, capsys):
    data = write_split(tmp_path / "data", *tickets(3, 2))
    code, out, err = advise([str(data), "--k", "4", *FAST], capsys)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        f"ftops advise: error: --k 4 is larger than the training split (3 examples in {data / 'train.jsonl'}); "
        "lower --k"
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--k", "0"], "--k: Input should be greater than or equal to 1"),
        (["--hosted-model", "gpt-4o-mini"], "--hosted-model needs --hosted-url"),
        (["--hosted-url", "http://127.0.0.1:9/v1"], "--hosted-url needs at least one --hosted-model"),
        (["--hosted-url", "http://x/v1", "--hosted-model", "m=nope/none"], "no price row 'nope/none'"),
        (["--price-base", "nope/none"], "price row 'nope/none' is not in the price table"),
    ],
)
def test_usage_errors_exit_2(ftops_home, tmp_path, capsys, argv, message):
    data = write_split(tmp_path / "data", *tickets(4, 2))
    code, out, err = advise([str(data), *argv, *FAST], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


def test_unreachable_hosted_url_is_noted_and_the_rest_runs(ftops_home, tiny_base, tmp_path, capsys):
    data = write_split(tmp_path / "data", *tickets(4, 2))
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    argv = [str(data), "--base", tiny_base.name, "--k", "2", "--hosted-url", url, "--hosted-model", "gpt-4o-mini"]
    code, out, err = advise([*argv, *FAST, "--out", str(tmp_path / "out"), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    notes = [line for line in err.splitlines() if line.startswith("ftops advise: note:")]
    assert len(notes) == 1 and f"hosted URL {url} unreachable" in notes[0] and "the rest still runs" in notes[0]
    assert [o["kind"] for o in report["options"]] == ["zero-shot", "few-shot", "retrieval"]
    assert any(f"hosted URL {url} unreachable" in n for n in report["notes"])
    assert f"hosted URL {url} unreachable" in (tmp_path / "out" / "report.md").read_text()


# --------------------------------------------------------------------------------------------- every option
@pytest.mark.slow
def test_every_option_with_ftops_serve_as_the_hosted_endpoint(served, tiny_base, models_dir, tmp_path, capsys):  # noqa: F811
    """Zero-shot, few-shot, retrieval, the run's adapter, a registered adapter and the served adapter as the "hosted"
    model; every cost recomputed from the YAML tables, the tokens of the hosted option from the service's ledger, the
    break-even from the training run's logged tokens and runtime."""
    import mlflow

    from ftops.serving.ledger import Ledger

    train, test = tickets(6, 3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTOPS_HOME", str(served["home"]))  # the served registry: tiny-chat@production resolves
        mp.setenv("FTOPS_MODELS", str(models_dir))
        mp.setenv("FTOPS_ADVISE_TEST_KEY", API_KEY)
        run_id = log_adapter_run(tiny_base, test, train_rows=train, b_init=0.5, seed=1)
        mlflow.MlflowClient().log_batch(
            run_id,
            metrics=[
                mlflow.entities.Metric("train_tokens", 250_000, 0, 0),
                mlflow.entities.Metric("train_runtime", 90.0, 0, 0),
            ],
        )
        argv = [
            run_id,
            *("--adapter", f"{MODEL}@production"),
            *("--hosted-url", served["url"] + "/v1", "--hosted-model", f"{MODEL}={FT_ROW}"),
            *("--hosted-key-env", "FTOPS_ADVISE_TEST_KEY"),
            *("--engine", "transformers", "--k", "2", "--max-new-tokens", "6", "--batch-size", "2"),
            *("--regression-limit", "2", "--queries-per-day", "500", "--out", str(tmp_path / "out"), "--json"),
        ]
        started = datetime.now(UTC)  # the service is shared: its ledger also holds other modules' requests
        code, out, err = advise(argv, capsys)
        assert code == 0, err
        report = json.loads(out)
        with Ledger(create=False) as ledger:
            served_rows = [r for r in ledger.rows(started) if r["adapter"] == MODEL and r["status"] == "ok"]
        advise_run = mlflow.MlflowClient().get_run(report["mlflow_run_id"])

    options = {o["kind"] + (":" + o["name"] if o["kind"] == "adapter" else ""): o for o in report["options"]}
    assert sorted(options) == sorted(
        [
            "zero-shot",
            "few-shot",
            "retrieval",
            f"adapter:adapter run {run_id[:8]}",
            f"adapter:adapter {MODEL}:{served['v1']}",
            "hosted",
        ]
    )
    assert report["json_task"] and report["quality_metric"] == "field_accuracy"
    for o in report["options"]:
        n = o["queries"]
        assert n == 3
        # hosted price of the option's own tokens, recomputed from prices.yaml
        row = PRICES["models"][o["price_key"]]
        usd = (
            o["prompt_tokens"] * row["input_usd_per_mtok"] + o["completion_tokens"] * row["output_usd_per_mtok"]
        ) / 1e6
        assert o["hosted_usd_per_1k"] == pytest.approx(usd / n * 1000)
        assert o["price_key"] == (FT_ROW if o["kind"] in ("adapter", "hosted") else BASE_ROW)
        if o["kind"] == "hosted":
            assert o["self_hosted_usd_per_1k"] is None and o["usd_per_1k"] == o["hosted_usd_per_1k"]
        else:  # the busy-time method: replica price x busy time, per 1,000 queries
            assert o["busy_s"] > 0
            assert o["self_hosted_usd_per_1k"] == pytest.approx(HOURLY * o["busy_s"] / 3600 / n * 1000)
            assert o["usd_per_1k"] == o["self_hosted_usd_per_1k"]
            assert "regression_score" in o["metrics"]
        assert o["latency_p95_s"] >= o["latency_p50_s"] > 0
        assert set(o["metrics"]) >= {"accuracy", "field_accuracy", "format_compliance", "answer_tokens"}

    zero, few, retrieval, hosted = (options[k] for k in ("zero-shot", "few-shot", "retrieval", "hosted"))
    # k=2 training examples in the prompt cost prompt tokens; the served engine counted the zero-shot prompt as we did
    assert few["prompt_tokens"] > zero["prompt_tokens"] and retrieval["prompt_tokens"] > zero["prompt_tokens"]
    assert hosted["prompt_tokens"] == zero["prompt_tokens"]
    # what the service's ledger recorded for the hosted option's requests
    assert len(served_rows) == 3
    assert sum(r["prompt_tokens"] for r in served_rows) == hosted["prompt_tokens"]
    assert sum(r["completion_tokens"] for r in served_rows) == hosted["completion_tokens"]

    # break-even of the run's adapter: its logged training (90 s on the replica; 250k tokens at the ft row's price)
    mine = options[f"adapter:adapter run {run_id[:8]}"]
    t = mine["training"]
    assert t["available"] and t["run_id"] == run_id
    assert t["self_hosted_usd"] == pytest.approx(90.0 / 3600 * HOURLY)
    assert t["hosted_usd"][FT_ROW] == pytest.approx(0.25 * PRICES["models"][FT_ROW]["training_usd_per_mtok"])
    assert {b["against"] for b in mine["break_even"]} == {zero["name"], few["name"], retrieval["name"], hosted["name"]}
    for b in mine["break_even"]:
        other = next(o for o in report["options"] if o["name"] == b["against"])
        saving = (other["usd_per_1k"] - mine["usd_per_1k"]) / 1000
        assert b["self_hosted"]["saving_usd_per_query"] == pytest.approx(saving)
        if saving > 0:
            queries = t["self_hosted_usd"] / saving
            assert b["self_hosted"]["queries"] == pytest.approx(queries)
            assert b["self_hosted"]["months"] == pytest.approx(queries / 500 / (730 / 24))
        else:
            assert b["self_hosted"]["queries"] is None
        if other["kind"] != "hosted":
            h_saving = (other["hosted_usd_per_1k"] - mine["hosted_usd_per_1k"]) / 1000
            assert b["hosted"]["saving_usd_per_query"] == pytest.approx(h_saving)
            if h_saving > 0:
                assert b["hosted"]["queries"] == pytest.approx(t["hosted_usd"][FT_ROW] / h_saving)
    registered = options[f"adapter:adapter {MODEL}:{served['v1']}"]
    assert not registered["training"]["available"]
    assert any(f"adapter {MODEL}:{served['v1']}: training cost unknown" in n for n in report["notes"])

    # OpenAI's fine-tuned row in use: new jobs end 2027-01-06, a warning (past or near, whenever this runs)
    assert any(w.startswith(FT_ROW + " ") and "2027-01-06" in w for w in report["warnings"])
    assert report["recommendation"]["why"]

    # outputs: the Markdown report names every option, the chart is a PNG, the MLflow run is linked to the adapters
    md = (tmp_path / "out" / "report.md").read_text()
    for o in report["options"]:
        assert f"| {o['name']} |" in md
    assert (tmp_path / "out" / "advice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "out" / "advice.json").read_text())["options"] == report["options"]
    tags = advise_run.data.tags
    assert tags["ftops.kind"] == "advise"
    assert f"{MODEL}:{served['v1']}" in tags["ftops.advise.adapters"].split(",")
    assert run_id in tags["ftops.advise.adapter_runs"].split(",")
    assert tags[f"ftops.advise.adapter.{MODEL}"] == served["v1"]
    assert advise_run.data.metrics["zero_shot.quality"] == zero["quality"]


# --------------------------------------------------------------------------------------------- the decision
def _row(name: str, kind: str, quality: float, usd_per_1k: float, **extra) -> dict:
    from ftops.advise.report import TIERS

    return {
        "name": name,
        "kind": kind,
        "tier": TIERS[kind],
        "quality": quality,
        "usd_per_1k": usd_per_1k,
        "hosted_usd_per_1k": usd_per_1k,
        "price_key": FT_ROW if kind == "adapter" else BASE_ROW,
        "metrics": {"regression_score": 0.7},
        **extra,
    }


def _decide(rows: list[dict], **config) -> dict:
    from ftops.advise.measure import AdviseConfig
    from ftops.advise.report import break_even, recommend

    cfg = AdviseConfig(source="x", **config)
    for r in rows:
        if r["kind"] == "adapter":
            r["training"] = {"available": True, "self_hosted_usd": 0.5, "hosted_usd": {}}
            r["break_even"] = break_even(r, rows, cfg.queries_per_day, cfg.price_fine_tuned)
    report = {"options": rows, "quality_metric": "field_accuracy", "warnings": []}
    return recommend(
        report, tolerance=cfg.tolerance, payback_months=cfg.payback_months, queries_per_day=cfg.queries_per_day
    )


def test_prompting_wins_when_it_is_good_enough_and_the_adapter_does_not_repay_soon():
    rows = [
        _row("zero-shot", "zero-shot", 0.20, 0.10),
        _row("few-shot (k=4)", "few-shot", 0.84, 0.30),
        _row("retrieval (BM25, k=4)", "retrieval", 0.86, 0.35),
        _row("adapter a:1", "adapter", 0.86, 0.2999),  # saves $0.0001/1k: repays $0.50 after 5M queries
    ]
    decision = _decide(rows, queries_per_day=1000)
    assert decision["option"] == "few-shot (k=4)"
    assert "few-shot (k=4) reaches 0.84 field_accuracy at $0.3/1k queries" in decision["why"]


def test_the_adapter_wins_for_cost_at_volume():
    rows = [
        _row("zero-shot", "zero-shot", 0.20, 0.10),
        _row("few-shot (k=4)", "few-shot", 0.84, 0.30),
        _row("adapter a:1", "adapter", 0.86, 0.10),  # saves $0.0002/query: repays $0.50 after 2,500 queries
    ]
    decision = _decide(rows, queries_per_day=1000)
    assert decision["option"] == "adapter a:1"
    assert "repays its $0.5 training after 2,500 queries (0.082 months at 1,000/day)" in decision["why"]
    assert _decide(rows, queries_per_day=1)["option"] == "few-shot (k=4)"  # 2,500 days: beyond the payback window


def test_the_adapter_wins_for_quality_and_nothing_wins_at_zero():
    rows = [_row("zero-shot", "zero-shot", 0.0, 0.1), _row("few-shot (k=4)", "few-shot", 0.5, 0.3)]
    decision = _decide([*rows, _row("adapter a:1", "adapter", 0.86, 0.4)])
    assert decision["option"] == "adapter a:1" and "No prompt or retrieval option comes close" in decision["why"]
    assert _decide([_row("zero-shot", "zero-shot", 0.0, 0.1)])["option"] is None
