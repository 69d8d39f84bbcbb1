"""Should you fine-tune? ``measure.py`` answers the held-out examples with every option (prompt, few-shot, retrieval,
adapters, hosted models) and prices them; ``report.py`` turns those rows into a decision, a break-even and a chart."""
