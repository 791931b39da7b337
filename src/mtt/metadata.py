"""Metadata stored in exported models: the architecture's references plus the user's."""

from typing import Optional

from metatomic.torch import ModelMetadata


def merge_metadata(default: ModelMetadata, user: Optional[ModelMetadata]) -> ModelMetadata:
    """The user's fields win; references of both are kept (without duplicates)."""
    if user is None:
        user = ModelMetadata()
    references = {}
    for key in ("implementation", "architecture", "model"):
        merged = list(default.references.get(key, []))
        merged += [r for r in user.references.get(key, []) if r not in merged]
        if merged:
            references[key] = merged
    extra = dict(default.extra)
    extra.update(user.extra)
    return ModelMetadata(
        name=user.name or default.name,
        description=user.description or default.description,
        authors=list(user.authors) or list(default.authors),
        references=references,
        extra=extra,
    )
