"""Loss on the assistant's tokens only needs a chat template with ``{% generation %}`` markers.

TRL patches the templates it knows (``trl.chat_template_utils.get_training_chat_template``); SmolLM2's ChatML
template is not among them, so ftops ships its marked twin in ``training/templates/``. Whichever template is used for
training must render every conversation exactly as the base's own template does: that is checked here, and the
adapter is saved with the base's original template.
"""

from __future__ import annotations

from pathlib import Path

from ftops.errors import FtopsError

TEMPLATES = Path(__file__).parent / "templates"
#: Marked twins of base templates TRL does not patch: file name -> the original it must reproduce.
_KNOWN = {"chatml_smollm2_training.jinja"}

_PROBE = [
    [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ],
]


def training_chat_template(tokenizer, base_name: str) -> str:
    """The template to train with: the base's own if it has generation markers, else TRL's patched one, else a twin
    shipped here. Raises :class:`FtopsError` if none renders like the base's template."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers  # heavy: on use only

    original = tokenizer.chat_template
    if not original:
        raise FtopsError(f"base {base_name!r} has no chat template; chat data cannot be formatted for it")
    if has_generation_markers(original):
        return original
    candidates: list[str] = []
    try:
        patched = get_training_chat_template(tokenizer)
        candidates.append(patched or original)
    except ValueError:
        pass
    candidates += [(TEMPLATES / name).read_text() for name in sorted(_KNOWN)]
    for candidate in candidates:
        if _renders_like(tokenizer, original, candidate):
            return candidate
    raise FtopsError(
        f"base {base_name!r}: its chat template has no {{% generation %}} markers and no marked twin is known, so "
        "assistant-only loss cannot mask the prompt; set assistant_only_loss=false or add a marked template to "
        f"{TEMPLATES}"
    )


def _renders_like(tokenizer, original: str, candidate: str) -> bool:
    try:
        for messages in _PROBE:
            a = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=original)
            b = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=candidate)
            if a != b:
                return False
            mask = tokenizer.apply_chat_template(
                messages, chat_template=candidate, return_dict=True, return_assistant_tokens_mask=True
            )["assistant_masks"]
            if not any(mask):
                return False
    except Exception:  # jinja raises TemplateError/TypeError/... on a template that does not fit
        return False
    return True
