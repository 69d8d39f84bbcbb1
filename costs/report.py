"""The cost report rendered: as text (what ``ftops cost report`` prints) and as a two-panel PNG chart. The report
itself is :func:`ftops.costs.usage.usage_report`'s dict; nothing here computes a figure."""

from __future__ import annotations

import math
from pathlib import Path

from ftops.costs.usage import UNRECORDED_REPLICA

# Hosted models drawn in the chart's monthly-cost panel when the price table has them (the table may hold more).
PLOT_MODELS = (
    "openai/gpt-4o",
    "openai/ft:gpt-4o-mini",
    "openai/ft:gpt-4.1-mini",
    "openai/gpt-4.1-nano",
    "together/llama-3.1-8b-instruct-turbo",
)
#: replicas listed one by one in the text report (the others are summed on one line; --json lists every one)
REPLICA_LINES = 12


# --------------------------------------------------------------------------------------------- text
def _usd(x: float | None) -> str:
    if x is None:
        return "-"
    sign, x = ("-" if x < 0 else ""), abs(x)
    return f"{sign}${x:,.2f}" if x >= 100 else f"{sign}${x:.4g}"


def _tok(x: float | None) -> str:
    if x is None:
        return "-"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}"


def _block(title: str, s: dict, where: str) -> list[str]:
    st = s["by_status"]
    lines = [
        title,
        (
            f"  requests {s['requests']} (ok {st['ok']}, cancelled {st['cancelled']}, failed {st['failed']}); "
            f"tokens {s['tokens']:,} (prompt {s['prompt_tokens']:,}, completion {s['completion_tokens']:,})"
        ),
        f"  self-hosted on {where}: {_usd(s['self_hosted_usd'])}  = {_usd(s['self_hosted_usd_per_mtok'])}/M tokens",
    ]
    if not s["tokens"]:
        return lines
    lines.append(f"  {'hosted model':<40} {'cost':>10} {'$/M tok':>10} {'savings':>10} {'break-even tokens/month':>24}")
    for key, usd in sorted(s["hosted_usd"].items(), key=lambda kv: kv[1]):
        be = s["break_even"][key]
        note = "" if be["within_replica_capacity"] is not False else " (beyond 1 replica's capacity)"
        lines.append(
            f"  {key:<40} {_usd(usd):>10} {_usd(s['hosted_usd_per_mtok'][key]):>10} "
            f"{_usd(s['savings_usd'][key]):>10} {_tok(be['monthly_tokens']):>24}{note}"
        )
    return lines


def _training_lines(t: dict) -> list[str]:
    name = f"{t['registered_model']} v{t['version']}, " if "registered_model" in t else ""
    if not t.get("available"):
        return [f"  training ({name}run {t.get('run_id', '-')}): unknown: {t['reason']}"]
    cheapest = min(t["hosted_usd"].items(), key=lambda kv: kv[1]) if t["hosted_usd"] else None
    hosted = ", ".join(f"{k} {_usd(v)}" for k, v in sorted(t["hosted_usd"].items(), key=lambda kv: kv[1]))
    return [
        f"  training ({name}run {t['run_id']}): {_tok(t['trained_tokens'])} tokens in {t['runtime_s']:.0f} s "
        f"= {_usd(t['self_hosted_usd'])} on this hardware; hosted: {hosted or 'no training prices'}"
        + (f" (cheapest {cheapest[0]})" if cheapest else "")
    ]


def _job_lines(jobs: list[dict]) -> list[str]:
    if not jobs:
        return []
    lines = ["", "FINE-TUNING JOBS (training cost per job: wall time on its hardware, against hosted training prices)"]
    for j in jobs:
        if "job_id" not in j:
            lines.append(f"  unknown: {j['reason']}")
            continue
        head = f"  {j['job_id']} ({j['registered_model'] or '-'}, run {j['run_id']}, {j['run_status'].lower()})"
        if not j["available"]:
            lines.append(f"{head}: unknown: {j['reason']}")
            continue
        hosted = ", ".join(f"{k} {_usd(v)}" for k, v in sorted(j["hosted_usd"].items(), key=lambda kv: kv[1]))
        gate = f" + gate {j['gate_wall_s']:.0f} s" if j["gate_wall_s"] is not None else ""
        lines.append(
            f"{head}: {_tok(j['trained_tokens'])} tokens, train {j['train_wall_s']:.0f} s{gate} on {j['hardware']} "
            f"({_usd(j['usd_per_hour'])}/h, from {j['hardware_from']}) = {_usd(j['self_hosted_usd'])} "
            f"({_usd(j['self_hosted_usd_per_mtok'])}/M tokens); hosted: {hosted or 'no training prices'}"
        )
    return lines


def _replica_lines(replicas: list[dict]) -> list[str]:
    lines = [
        "REPLICAS (each charged its own engine busy time x its hardware's hourly price; the total is their sum)",
        f"  {'replica':<32} {'hardware':<20} {'$/h':>8} {'requests':>9} {'tokens':>9} {'busy s':>9} {'util':>5} "
        f"{'self-hosted':>12} {'$/M tok':>9}",
    ]
    shown = sorted(replicas, key=lambda e: (-e["self_hosted_usd"], e["replica"]))
    for e in shown[:REPLICA_LINES]:
        util = f"{e['utilization']:.0%}" if e["utilization"] is not None else "-"
        note = "" if e["priced_from"] == "its rows" else f"  (priced as {e['priced_as']}: {e['priced_from']})"
        lines.append(
            f"  {e['replica']:<32} {e['hardware']:<20} {e['usd_per_hour']:>8.4g} {e['requests']:>9} "
            f"{_tok(e['tokens']):>9} {e['busy_s']:>9.1f} {util:>5} {_usd(e['self_hosted_usd']):>12} "
            f"{_usd(e['self_hosted_usd_per_mtok']):>9}{note}"
        )
    if rest := shown[REPLICA_LINES:]:
        lines.append(
            f"  {f'{len(rest)} more replicas (--json lists each)':<62} {sum(e['requests'] for e in rest):>9} "
            f"{_tok(sum(e['tokens'] for e in rest)):>9} {sum(e['busy_s'] for e in rest):>9.1f} {'':>5} "
            f"{_usd(sum(e['self_hosted_usd'] for e in rest)):>12}"
        )
    if any(e["replica"] == UNRECORDED_REPLICA for e in replicas):
        lines.append(
            f"  {UNRECORDED_REPLICA}: rows an older ftops wrote, before the ledger recorded replicas: their busy time "
            "is counted as one machine's"
        )
    return lines


def _where(replicas: list[dict]) -> str:
    """``2 replicas (aws-g6.xlarge)``: what the self-hosted figures were charged on."""
    profiles = sorted({e["priced_as"] for e in replicas})
    n = len(replicas)
    return f"{n} replica{'s' if n != 1 else ''} ({', '.join(profiles)})"


def format_report(report: dict) -> str:
    h, t = report["hardware"], report["total"]
    role = (
        "every replica's busy time, training runs and jobs that name no hardware"
        if h["override"]
        else "training runs and jobs that name no hardware"
    )
    lines = [
        (
            f"cost report{' since ' + report['since'] if report['since'] else ''} "
            f"(prices as of {report['prices_as_of']}, hardware as of {report['hardware_as_of']})"
        ),
        f"hardware {h['name']}: {_usd(h['usd_per_hour'])}/h = {_usd(h['monthly_usd'])}/month ({h['description']}); "
        f"prices {role}",
    ]
    if not t["requests"]:
        lines.append("the ledger has no requests in this window; serve some traffic with `ftops serve` first")
        lines += [x for tr in report.get("training_runs", []) for x in _training_lines(tr)]
        return "\n".join(lines + _job_lines(report.get("fine_tuning_jobs", [])))
    util = f", utilization {t['utilization']:.0%}" if t["utilization"] is not None else ""
    lines.append(
        f"{_where(report['replicas'])}: engine busy {t['busy_s']:.1f} s (summed over replicas) in a "
        f"{t['window_s']:.1f} s window{util}; measured throughput {t['throughput_tokens_per_s'] or 0:.1f} tokens/s "
        f"per busy replica -> one replica serves up to {_tok(t['replica_capacity_monthly_tokens'])} tokens/month; "
        f"this traffic is {_tok(t['projected_monthly_tokens'])} tokens/month"
    )
    lines.append("")
    lines += _replica_lines(report["replicas"])
    lines.append("")
    lines += _block("TOTAL", t, _where(report["replicas"]))
    for a in report["adapters"]:
        versions = f" (versions {', '.join(a['registry_versions'])})" if a["registry_versions"] else ""
        lines.append("")
        lines += _block(f"ADAPTER {a['adapter'] or '(base model)'} on {a['model']}{versions}", a, "its replicas")
        for tr in a.get("training", []):
            lines += _training_lines(tr)
    for tr in report.get("training_runs", []):
        lines += _training_lines(tr)
    return "\n".join(lines + _job_lines(report.get("fine_tuning_jobs", [])))


# --------------------------------------------------------------------------------------------- chart
def plot_report(report: dict, path: Path) -> Path:
    """Two panels: $ per million tokens both ways; monthly cost against monthly volume with the break-evens."""
    import matplotlib  # heavy: imported only when a chart is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, h = report["total"], report["hardware"]
    name = ", ".join(sorted({e["priced_as"] for e in report["replicas"]})) or h["name"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [1, 1.2]})
    per_mtok = {k: v for k, v in t["hosted_usd_per_mtok"].items() if v is not None}
    bars = sorted(per_mtok.items(), key=lambda kv: kv[1])
    if t["self_hosted_usd_per_mtok"] is not None:
        bars.append((f"self-hosted, busy time ({name})", t["self_hosted_usd_per_mtok"]))
        bars.sort(key=lambda kv: kv[1])
    _plot_per_mtok(ax1, bars)
    keys = [k for k in PLOT_MODELS if k in per_mtok] or [k for k, _ in bars if k in per_mtok][:5]
    _plot_monthly(ax2, t, h["hours_per_month"], name, {k: per_mtok[k] for k in keys})
    fig.suptitle(
        f"ftops cost report: {t['requests']} requests, {t['tokens']:,} tokens; prices as of {report['prices_as_of']}",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_per_mtok(ax, bars: list[tuple[str, float]]) -> None:
    """The left panel: USD per million tokens of each hosted model and of self-hosting, on a log scale."""
    if bars:
        names, values = zip(*bars, strict=True)
        colors = ["tab:green" if n.startswith("self-hosted") else "tab:gray" for n in names]
        ax.barh(names, values, color=colors)
        ax.set_xscale("log")
        for i, v in enumerate(values):
            ax.text(v, i, f" ${v:.3g}", va="center", fontsize=8)
        ax.set_xlim(min(values) / 2, max(values) * 8)
    else:
        ax.text(0.5, 0.5, "no requests in the ledger", ha="center", transform=ax.transAxes)
    ax.set_xlabel("USD per million tokens (log scale)")
    ax.set_title("Cost per million tokens, this traffic's prompt/completion mix", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)


def _plot_monthly(ax, t: dict, hours_per_month: float, name: str, per_mtok: dict[str, float]) -> None:
    """The right panel: monthly cost against monthly volume, the replicas needed against each hosted model of
    ``per_mtok`` (USD per million tokens), the break-evens within one replica dotted."""
    monthly = t["usd_per_hour"] * hours_per_month  # one replica at the replicas' busy-time-weighted $/h
    capacity = t.get("replica_capacity_monthly_tokens")
    bes = [b["monthly_tokens"] for b in t["break_even"].values() if b["monthly_tokens"]]
    lo = 1e5
    hi = max([1e9, *(b * 10 for b in bes)] + ([capacity * 3] if capacity else []))
    hi = min(hi, 1e14)
    xs = [10 ** (math.log10(lo) + i * (math.log10(hi) - math.log10(lo)) / 200) for i in range(201)]
    replicas = [max(1, math.ceil(x / capacity)) if capacity else 1 for x in xs]
    ax.plot(
        xs,
        [n * monthly for n in replicas],
        color="tab:green",
        lw=2.5,
        label=f"self-hosted: {name} x replicas needed (${monthly:,.0f}/month each)",
    )
    for key, color in zip(per_mtok, ("tab:red", "tab:blue", "tab:orange", "tab:purple", "tab:brown"), strict=False):
        price = per_mtok[key] / 1e6
        ax.plot(xs, [x * price for x in xs], lw=1.2, color=color, label=f"{key} (${per_mtok[key]:.3g}/M)")
        be = t["break_even"][key]
        if be["monthly_tokens"] and be["within_replica_capacity"] is not False and lo <= be["monthly_tokens"] <= hi:
            ax.plot([be["monthly_tokens"]], [monthly], "o", color=color)
    if t.get("projected_monthly_tokens"):
        ax.axvline(t["projected_monthly_tokens"], color="black", ls="--", lw=1, label="this traffic, per month")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens per month (log)")
    ax.set_ylabel("USD per month (log)")
    ax.set_title("Monthly cost: fixed replicas vs per-token APIs (dots: break-even within 1 replica)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="major", alpha=0.3)
