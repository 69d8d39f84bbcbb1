"""The report of ``ftops advise``: the decision in the guides' order, each adapter's break-even, the price rows'
availability warnings, and the report as Markdown and as a chart.

Everything here works on the report's rows (plain dicts, as ``advice.json`` holds them), so a report can be
recomputed, re-rendered or tested without a model: :mod:`ftops.advise.measure` answers the options and builds the
rows, then calls these.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

#: what the decision order calls each kind of option: 1 prompt, 2 retrieval, 3 fine-tune
TIERS = {"zero-shot": 1, "few-shot": 1, "hosted": 1, "retrieval": 2, "adapter": 3}
TIER_NAMES = {1: "prompt", 2: "retrieval", 3: "fine-tune"}
DAYS_PER_MONTH = 730 / 24  # the cost model's month: 730 hours


def break_even(adapter: dict, rows: list[dict], queries_per_day: float, price_fine_tuned: str) -> list[dict]:
    """For each other option: queries (and months at ``queries_per_day``) after which the adapter's saving per query
    repays its training. Self-hosted: training runtime x replica price against ``usd_per_1k``. Hosted: the same
    trained tokens at ``price_fine_tuned``'s training price, the adapter's tokens at its serving price against the
    other option's tokens at its hosted-equivalent price. None when there is no saving (or no training cost)."""
    t = adapter.get("training") or {}

    def one(training_usd, mine, theirs):
        if training_usd is None or mine is None or theirs is None:
            return {"saving_usd_per_query": None, "queries": None, "months": None}
        saving = (theirs - mine) / 1000
        queries = training_usd / saving if saving > 0 else None
        return {
            "saving_usd_per_query": saving,
            "queries": queries,
            "months": None if queries is None else queries / queries_per_day / DAYS_PER_MONTH,
        }

    out = []
    for other in rows:
        if other is adapter or other["kind"] == "adapter":
            continue
        hosted_training = (t.get("hosted_usd") or {}).get(price_fine_tuned)
        out.append(
            {
                "against": other["name"],
                "training_usd": t.get("self_hosted_usd"),
                "self_hosted": one(t.get("self_hosted_usd"), adapter["usd_per_1k"], other["usd_per_1k"]),
                "hosted_training_usd": hosted_training,
                "hosted": one(hosted_training, adapter["hosted_usd_per_1k"], other["hosted_usd_per_1k"])
                if other["kind"] != "hosted"
                else one(None, None, None),
            }
        )
    return out


def availability_warnings(rows: list[dict], prices, today: date, warn_days: int) -> list[str]:
    """One line per price row in use whose new-jobs or availability date is past or within ``warn_days``."""
    out = []
    for key in sorted({r["price_key"] for r in rows if r["price_key"]}):
        p = prices.models[key]
        users = ", ".join(r["name"] for r in rows if r["price_key"] == key)
        for what, when in (("new fine-tuning jobs", p.new_jobs_until), ("the model itself", p.available_until)):
            if when is None:
                continue
            days = (when - today).days
            if days < 0:
                state = f"ended on {when} ({-days} days ago)"
            elif days <= warn_days:
                state = f"end on {when} (in {days} days)"
            else:
                continue
            out.append(f"{key} (prices {users}): {what} {state}; source: {' '.join(p.availability_source.split())}")
    return out


def _usd(x: float | None) -> str:
    return "-" if x is None else f"{'-' if x < 0 else ''}${abs(x):.3g}"


def _count(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _when(b: dict) -> str:
    """``queries | months`` cells of one break-even: 'never' without a saving, '-' without a training cost."""
    if b["queries"] is None:
        return "never | -" if b["saving_usd_per_query"] is not None else "- | -"
    return f"{_count(b['queries'])} | {b['months']:.3g}"


def recommend(report: dict, *, tolerance: float, payback_months: float, queries_per_day: float) -> dict:
    """The guides' order: the first option (prompt, then retrieval, then fine-tune; cheapest first within a tier)
    whose quality is within ``tolerance`` of the best; an adapter instead when it is good enough too, cheaper per
    query, and repays its training within ``payback_months``. The reason, in numbers."""
    rows, metric = report["options"], report["quality_metric"]
    if not rows:
        return {"option": None, "why": "no option could be evaluated; see the notes"}
    best = max(rows, key=lambda r: r["quality"])
    if best["quality"] <= 0:
        return {
            "option": None,
            "why": f"no option does the task: the best {metric} is {best['quality']:.2f} ({best['name']}); "
            "fix the data, the prompt or the base model before deciding",
        }
    target = best["quality"] - tolerance
    cost = lambda r: r["usd_per_1k"] if r["usd_per_1k"] is not None else float("inf")  # noqa: E731
    ordered = sorted(rows, key=lambda r: (r["tier"], cost(r)))
    good = [r for r in ordered if r["quality"] >= target]
    pick = good[0]

    def said(r):
        return f"{r['name']} reaches {r['quality']:.2f} {metric} at {_usd(r['usd_per_1k'])}/1k queries"

    why = [
        f"In the guides' order (prompt, then retrieval, then fine-tune), {said(pick)}, within {tolerance:.2f} "
        f"of the best ({best['name']}: {best['quality']:.2f})."
    ]
    if pick["kind"] != "adapter":
        for r in (r for r in good if r["kind"] == "adapter" and cost(r) < cost(pick)):
            be = next((b["self_hosted"] for b in r["break_even"] if b["against"] == pick["name"]), {})
            if be.get("months") is not None and be["months"] <= payback_months:
                why.append(
                    f"But {said(r)}: it repays its {_usd(r['training'].get('self_hosted_usd'))} training after "
                    f"{_count(be['queries'])} queries ({be['months']:.2g} months at "
                    f"{queries_per_day:,.0f}/day), "
                    f"within {payback_months:g} months: fine-tune for cost at volume."
                )
                pick = r
                break
    else:
        below = [r for r in ordered if r["tier"] < 3]
        top = max(below, key=lambda r: r["quality"]) if below else None
        if top is not None:
            why.append(
                f"No prompt or retrieval option comes close: the best of them, {said(top)}; fine-tuning is worth it "
                "for quality."
            )
    if pick["kind"] == "adapter":
        base_reg = next((r["metrics"].get("regression_score") for r in rows if r["kind"] == "zero-shot"), None)
        reg = pick["metrics"].get("regression_score")
        if base_reg and reg is not None and reg < 0.95 * base_reg:
            why.append(
                f"Caveat: it forgot general skills (regression suite {reg:.2f} against the base's {base_reg:.2f})."
            )
    for w in report["warnings"]:
        if pick["price_key"] and w.startswith(pick["price_key"] + " "):
            why.append(f"Warning: {w.split(';')[0]}.")
    return {"option": pick["name"], "why": " ".join(why)}


def markdown(report: dict) -> str:
    c, metric = report["config"], report["quality_metric"]
    lines = [
        f"# Should you fine-tune? `ftops advise {report['source']}`",
        "",
        f"Base `{report['base']['name']}`; {report['held_out_examples']} held-out examples, "
        f"{report['training_examples']} training examples; k={c['k']}; engine {c['engine']}, greedy, "
        f"max_new_tokens {c['max_new_tokens']}, batches of {c['batch_size']}. Self-hosted on "
        f"`{report['replica']['name']}` at ${report['replica']['usd_per_hour']}/h (hardware as of "
        f"{report['hardware_as_of']}), busy-time method; hosted prices as of {report['prices_as_of']}. "
        f"Quality: {metric}.",
        "",
        f"**Recommendation: {report['recommendation']['option'] or 'none'}.** {report['recommendation']['why']}",
        "",
        "| option | " + metric + " | format | exact | regression | prompt tok/q | completion tok/q | "
        "$/1k queries | hosted-priced $/1k (row) | p50 s | p95 s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["options"]:
        m = r["metrics"]

        def f(name, m=m):
            return "-" if m.get(name) is None else f"{m[name]:.2f}"

        lines.append(
            f"| {r['name']} | {r['quality']:.2f} | {f('format_compliance')} | {f('accuracy')} | "
            f"{f('regression_score')} | {r['prompt_tokens_per_query']:.0f} | {r['completion_tokens_per_query']:.1f} | "
            f"{_usd(r['usd_per_1k'])}{' (API)' if r['kind'] == 'hosted' else ''} | "
            f"{_usd(r['hosted_usd_per_1k'])} ({r['price_key'] or 'no row'}) | {r['latency_p50_s']:.2f} | "
            f"{r['latency_p95_s']:.2f} |"
        )
    adapters = [r for r in report["options"] if r["kind"] == "adapter"]
    if adapters:
        lines += [
            "",
            f"### Break-even at {c['queries_per_day']:,.0f} queries/day",
            "",
            "| adapter | against | training $ | saving $/query | queries | months | hosted: training $ | "
            "saving $/query | queries | months |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for a in adapters:
            if not a["training"].get("available"):
                lines.append(f"| {a['name']} | every option | unknown (see the notes) | | | | | | | |")
                continue
            for b in a["break_even"]:
                s, h = b["self_hosted"], b["hosted"]
                lines.append(
                    f"| {a['name']} | {b['against']} | {_usd(b['training_usd'])} | {_usd(s['saving_usd_per_query'])} | "
                    f"{_when(s)} | {_usd(b['hosted_training_usd'])} | {_usd(h['saving_usd_per_query'])} | {_when(h)} |"
                )
        lines += [
            "",
            "Self-hosted: the adapter's training runtime x the replica price, against the saving per query on this "
            "replica. Hosted: the same trained tokens at the fine-tuned row's training price, the adapter's tokens at "
            f"`{c['price_fine_tuned']}` against the other option's tokens at `{c['price_base']}`. 'never': no saving.",
        ]
    for title, items in (("Warnings", report["warnings"]), ("Notes", report["notes"])):
        if items:
            lines += ["", f"### {title}", ""] + [f"- {x}" for x in items]
    lines += [
        "",
        "How to read it: every option answered the same held-out examples, scored with the gate's metrics. Prompt "
        "options leave the base's weights alone, so their regression score is the base's (the suite asked without "
        "the task prompt). A query's latency is the wall time of its batch on the offline engine (an upper bound); "
        "the hosted-priced column prices an option's own tokens at a hosted API's rates, its quality is the one "
        "measured here.",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path:
    """Quality against cost per 1,000 queries, one point per option."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {1: "tab:blue", 2: "tab:orange", 3: "tab:green"}
    points = [r for r in report["options"] if r["usd_per_1k"]]
    for r in points:
        ax.scatter(
            r["usd_per_1k"], r["quality"], s=60, color=colors[r["tier"]], marker="s" if r["kind"] == "hosted" else "o"
        )
        ax.annotate(r["name"], (r["usd_per_1k"], r["quality"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    for tier, color in colors.items():
        ax.scatter([], [], color=color, label=TIER_NAMES[tier])
    if points:
        ax.set_xscale("log")
        lo, hi = min(r["usd_per_1k"] for r in points), max(r["usd_per_1k"] for r in points)
        ax.set_xlim(lo / 2, hi * 4)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("USD per 1,000 queries (self-hosted busy time; hosted: price table), log scale")
    ax.set_ylabel(report["quality_metric"])
    ax.set_title(
        f"ftops advise: {report['held_out_examples']} held-out examples, base {report['base']['name']}", fontsize=10
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
