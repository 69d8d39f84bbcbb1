"""Scoring answers against references: pure functions, no engine and no MLflow.

- exact match with the reference; JSON answers compare as parsed objects (:func:`exact_match`)
- field accuracy: share of the reference object's fields the answer got right (:func:`field_accuracy`)
- format compliance: a JSON object valid against the schema (:func:`format_ok`; the schema from
  :func:`load_schema`: a file, the demo task's, or one derived from the references)
- one side's task metrics over its answers (:func:`side_metrics`), and the regression suite's scores with
  retention (:func:`regression_metrics`)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ftops.errors import FtopsError
from ftops.expectations.demo_data import TICKET_SCHEMA
from ftops.registry.engines import Generation


def parse_json_object(text: str) -> dict | None:
    """The answer as a JSON object, tolerating a surrounding Markdown code fence; None if it is not one."""
    s = text.strip()
    fence = re.match(r"^```(?:json)?\s*(.*?)\s*```$", s, re.DOTALL)
    if fence:
        s = fence.group(1)
    try:
        value = json.loads(s)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _normalize(text: str) -> str:
    return " ".join(text.split())


def exact_match(prediction: str, reference: str, json_task: bool) -> bool:
    if json_task:
        pred = parse_json_object(prediction)
        return pred is not None and pred == parse_json_object(reference)
    return _normalize(prediction) == _normalize(reference)


def field_accuracy(prediction: str, reference: str) -> float:
    """Share of the reference object's fields that the predicted object has with an equal value."""
    ref = parse_json_object(reference) or {}
    pred = parse_json_object(prediction)
    if not ref:
        return 1.0 if pred == ref else 0.0
    if pred is None:
        return 0.0
    return sum(1 for k, v in ref.items() if k in pred and pred[k] == v) / len(ref)


def derive_schema(references: list[dict]) -> dict:
    """A JSON schema from the reference objects: an object requiring the keys every reference has."""
    required = set(references[0]) if references else set()
    for ref in references[1:]:
        required &= set(ref)
    return {"type": "object", "required": sorted(required)}


def load_schema(spec: str | None, references: list[dict]) -> dict:
    if spec is None:
        return derive_schema(references)
    if spec == "ticket":
        return TICKET_SCHEMA
    path = Path(spec)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FtopsError(f"{spec}: cannot read the JSON schema ({e}); give a .json schema file or 'ticket'") from e


def format_ok(prediction: str, schema: dict) -> bool:
    import jsonschema  # heavy (about 0.2 s): every `ftops` command would pay for it at start

    pred = parse_json_object(prediction)
    if pred is None:
        return False
    return jsonschema.Draft202012Validator(schema).is_valid(pred)


def mean(values: list[float]) -> float:
    """The mean of ``values``; 0.0 for none."""
    return sum(values) / len(values) if values else 0.0


def side_metrics(prefix: str, gens: list[Generation], refs: list[str], json_task: bool, schema: dict | None) -> dict:
    """The task metrics of one side's answers ``gens`` against the references ``refs``, names prefixed with ``prefix``
    (``""`` for the candidate, ``"base."`` for the base): what the gate judges. ``ftops advise`` scores its options
    with it too."""
    m = {
        f"{prefix}accuracy": mean([float(exact_match(g.text, r, json_task)) for g, r in zip(gens, refs)]),
        f"{prefix}answer_tokens": mean([g.tokens for g in gens]),
        f"{prefix}latency_s": mean([g.latency_s for g in gens]),
        f"{prefix}tokens_per_s": sum(g.tokens for g in gens) / max(sum(g.latency_s for g in gens), 1e-9),
    }
    if json_task:
        m[f"{prefix}field_accuracy"] = mean([field_accuracy(g.text, r) for g, r in zip(gens, refs)])
        m[f"{prefix}format_compliance"] = mean([float(format_ok(g.text, schema)) for g in gens])
    return m


def regression_metrics(candidate_ok: list[bool], base_ok: list[bool]) -> dict[str, float]:
    """The regression suite's scores from whether each item passed its check, for the candidate and the base: the
    share passed (``regression_score``, ``base.regression_score``) and ``retention``, candidate / base (1.0 when the
    base scores 0)."""
    score, base_score = mean([float(x) for x in candidate_ok]), mean([float(x) for x in base_ok])
    retention = score / base_score if base_score > 0 else 1.0  # the base knew nothing: nothing to lose
    return {"regression_score": score, "base.regression_score": base_score, "retention": retention}
