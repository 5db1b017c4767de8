"""The model registry: every aggregated global model, with a card that says what it is and how it was made.

`Registry(root)` publishes versions `v0001`, `v0002`, ... into one folder shared by every run; see docs/registry.md
for the layout, the card's fields and what survives a crash.
"""

from server.registry.card import MODEL_DESCRIPTION, SECTIONS, UPDATABLE, CardError, clean_card, describe_model
from server.registry.render import render_markdown
from server.registry.store import Published, Registry, sha256_file

__all__ = [
    "MODEL_DESCRIPTION",
    "SECTIONS",
    "UPDATABLE",
    "CardError",
    "Published",
    "Registry",
    "clean_card",
    "describe_model",
    "render_markdown",
    "sha256_file",
]
