"""The data stage: validate, dedup and split fine-tuning datasets; the demo ticket dataset; the regression suite.

This package imports nothing else of ftops: callers hand it a tokenizer object and a context length.
"""


class DataError(Exception):
    """A dataset that cannot be used: the message says what is wrong, where, and what to do."""
