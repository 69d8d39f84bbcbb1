"""``ftops cost report``: what every served token cost, against hosted APIs (formula: docs/cost.md). The figures are
:mod:`ftops.costs.usage`'s, the text and the chart :mod:`ftops.costs.report`'s; this module reads the arguments, runs
the report and logs it to MLflow."""

from __future__ import annotations

import argparse
import json
import logging
import re
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ftops import settings
from ftops.costs.report import format_report, plot_report
from ftops.costs.runs import job_costs, training_cost
from ftops.costs.tables import load_hardware, load_prices
from ftops.costs.usage import usage_report
from ftops.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cost",
        help="cost of served tokens against hosted APIs",
        description="Cost of the tokens in the request ledger, against hosted APIs.",
    )
    csub = p.add_subparsers(dest="cost_command", metavar="ACTION", required=True)
    rep = csub.add_parser(
        "report",
        help="per replica, per adapter and in total: tokens, self-hosted vs hosted cost, break-even, training cost",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Per replica, per adapter and in total: tokens, self-hosted cost (each replica's own engine busy time x the hourly
price of the hardware profile its rows name; the total is the sum over replicas), the hosted-equivalent cost for
every model of the price table, savings, $ per million tokens both ways, the monthly token volume at which a fixed
replica (730 h/month) beats per-token pricing, each adapter's training run cost, and each fine-tuning API job's
training cost (its wall time x its hardware profile's hourly price, against hosted training prices). The formula is
in docs/cost.md; the figures are recomputed from the ledger rows, the MLflow runs and the two YAML tables.

examples:
  ftops cost report
  ftops cost report --since 24h --json
  ftops cost report --hardware-profile aws-g6.xlarge --plot cost.png""",
    )
    rep.add_argument(
        "--since",
        help="only requests that ended at/after this: ISO date/time (UTC if no offset) "
        "or a duration back from now like 30m, 24h, 7d",
    )
    rep.add_argument("--json", action="store_true", help="print the report as JSON")
    rep.add_argument("--plot", metavar="PATH", help="write a PNG chart here and log it to MLflow (run 'cost-report')")
    rep.add_argument(
        "--ledger",
        metavar="URL",
        help="ledger database URL (default $FTOPS_LEDGER_URL, else sqlite:///$FTOPS_HOME/ledger.db)",
    )
    rep.add_argument("--prices", metavar="YAML", help="hosted price table (default costs/prices.yaml, $FTOPS_PRICES)")
    rep.add_argument(
        "--hardware",
        metavar="YAML",
        help="hardware price table, hourly price per instance (default costs/hardware.yaml, $FTOPS_HARDWARE)",
    )
    rep.add_argument(
        "--hardware-profile",
        "--replica",  # its name before replicas were recorded apart from their hardware
        dest="hardware_profile",
        metavar="NAME",
        help="price every replica at this hardware.yaml instance instead of the one its rows name (the same "
        "traffic on other hardware); also prices training runs and jobs that name none (default: the table's "
        "default, $FTOPS_HARDWARE_PROFILE). --replica is its old name",
    )
    rep.add_argument(
        "--train-run",
        action="append",
        default=[],
        metavar="RUN_ID",
        help="also price this MLflow training run (repeatable); adapters' runs are found by version",
    )
    rep.set_defaults(func=_report)


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """``30m``/``24h``/``7d`` back from ``now``, or an ISO date/time (UTC unless it has an offset)."""
    if not text:
        return None
    now = now or datetime.now(UTC)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
        return now - timedelta(**{unit: float(m.group(1))})
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--since {text!r}: expected an ISO date/time (2026-11-01, 2026-11-01T12:00) or a "
            f"duration like 30m, 24h, 7d"
        ) from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def _report(args: argparse.Namespace) -> int:
    # the ledger brings SQLAlchemy and Alembic (about a second): loaded when a report is run, not for `ftops --help`
    from ftops.serving.ledger import Ledger

    since = parse_since(args.since)
    prices = load_prices(args.prices)
    hardware = load_hardware(args.hardware)
    profile = args.hardware_profile
    if profile:
        hardware.instance(profile)  # unknown name: one line naming the choices
    with Ledger(args.ledger, prices=prices, hardware=hardware, hardware_profile=profile, create=False) as ledger:
        report = usage_report(ledger, since, hardware_profile=profile, training=True)
    usd_per_hour = report["hardware"]["usd_per_hour"]
    report["training_runs"] = [training_cost(run_id, prices, usd_per_hour) for run_id in args.train_run]
    report["fine_tuning_jobs"] = job_costs(prices, hardware, report["hardware"]["name"], since)
    if args.plot:
        path = plot_report(report, Path(args.plot))
        report["plot"] = {"path": str(path), "mlflow_run_id": log_report_to_mlflow(report, path)}
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_report(report))
    return 0


def log_report_to_mlflow(report: dict, png: Path) -> str:
    """Log the report (JSON), its headline figures and the chart as an MLflow run named ``cost-report``."""
    import mlflow  # heavy: imported when the report is logged

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables"
    exp = settings.experiment_id()
    t = report["total"]
    with mlflow.start_run(experiment_id=exp, run_name="cost-report") as run:
        mlflow.set_tag("ftops.kind", "cost-report")
        mlflow.log_params(
            {
                "hardware": report["hardware"]["name"],
                "replicas": report["total"]["replicas"],
                "since": report["since"] or "all",
                "prices_as_of": report["prices_as_of"],
            }
        )
        metrics = {"requests": t["requests"], "tokens": t["tokens"], "self_hosted_usd": t["self_hosted_usd"]}
        if t["self_hosted_usd_per_mtok"] is not None:
            metrics["self_hosted_usd_per_mtok"] = t["self_hosted_usd_per_mtok"]
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(png))
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "cost_report.json").write_text(json.dumps(report, indent=2, default=str))
            mlflow.log_artifact(str(Path(tmp) / "cost_report.json"))
        return run.info.run_id
