"""Model routing: what each served name means right now, the engine name a request's ``model`` maps to, the 404
message of a name that is not served, and the cards of ``GET /v1/models``.

``model: NAME`` goes to the version its alias points at now (``NAME:VERSION``, the engine's name of it, which is also
what a client pins); the base goes to itself. The service (``service.py``) swaps what :class:`Routing` holds as its
registry watcher follows the aliases; the gateway reads it on every request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Routing:
    """What each served name means right now. Swapped atomically by the registry watcher."""

    base: str
    """The base model's served name."""
    current: dict[str, str] = field(default_factory=dict)
    """Registered model name -> version its alias points at (loaded)."""
    loaded: dict[str, dict] = field(default_factory=dict)
    """``NAME:VERSION`` -> {name, version, alias, path} of every loaded adapter version."""
    aliases: dict[str, str] = field(default_factory=dict)
    """Registered model name -> the alias it follows."""


def resolve(routing: Routing, model: str) -> tuple[str, str | None, str | None] | None:
    """``model`` -> (engine model name, registered name, version); None when unknown."""
    if model == routing.base:
        return model, None, None
    if model in routing.current:
        version = routing.current[model]
        return f"{model}:{version}", model, version
    if model in routing.loaded:
        info = routing.loaded[model]
        return model, info["name"], info["version"]
    return None


def not_found_message(model: str, why: str | None) -> str:
    """The 404 message for ``model``: ``why`` it is not served when the service knows (refused: not gated,
    revoked, digest mismatch; or could not be loaded just now)."""
    if why:
        return f"The model `{model}` is not served: {why}. GET /v1/models lists what this service serves."
    return (
        f"The model `{model}` does not exist or you do not have access to it. "
        "GET /v1/models lists what this service serves."
    )


def model_cards(listed: list[dict], routing: Routing, base_sha256: str, max_model_len: int) -> list[dict]:
    """The ``data`` of ``GET /v1/models``: of the engine's own cards (``listed``) the base and every loaded adapter
    version, with where each comes from, then one card per followed registered model at its alias."""
    cards = []
    for card in listed:
        info = routing.loaded.get(card["id"])
        if info is None and card["id"] != routing.base:
            continue
        if info is None:  # the base: its name and digest, not a path on this server
            card.update(root=f"{routing.base}@sha256:{base_sha256[:12]}")
        if info is not None:
            card.update(
                parent=routing.base,
                registry_name=info["name"],
                registry_version=info["version"],
                root=f"models:/{info['name']}/{info['version']}",
            )
        cards.append(card)
    for name, version in sorted(routing.current.items()):
        cards.append(
            {
                "id": name,
                "object": "model",
                "created": int(time.time()),
                "owned_by": "ftops",
                "root": f"models:/{name}@{routing.aliases[name]}",
                "parent": routing.base,
                "registry_name": name,
                "registry_alias": routing.aliases[name],
                "registry_version": version,
                "max_model_len": max_model_len,
            }
        )
    return cards
