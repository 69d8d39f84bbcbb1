"""What a token costs: the hosted price table (``prices.yaml``), the hardware profiles (``hardware.yaml``) and the cost
model over the ledger's rows (``model.py``; the formula is in ``docs/cost.md``). Used by the ledger, the fine-tuning
API's job costs and ``ftops advise``."""
