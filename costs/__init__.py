"""What a token costs: the hosted price table (``prices.yaml``) and the hardware profiles (``hardware.yaml``), read by
``tables.py``; the cost model over the ledger's rows (``usage.py``; the formula is in ``docs/cost.md``); what training
runs and fine-tuning jobs cost (``runs.py``); the report as text and chart (``report.py``). Used by the ledger, the
fine-tuning API's job costs and ``ftops advise``."""
