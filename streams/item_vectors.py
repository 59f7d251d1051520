"""What an item event means for state: its embedding (its own when it carries one, else its
content's hash) and its catalog meta.

The worker (which stores item embeddings for session and user embeddings) and every serving
replica (which indexes them) call this one function, so they agree on every vector.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from features.catalog import VECTOR_CONTENT, VECTOR_LEARNED, VECTOR_NONE, ItemMeta
from features.embeddings import content_embedding
from streams.schema import Item


def item_meta(item: Item) -> ItemMeta:
    """The catalog meta an item event leaves behind (a delete leaves it unavailable)."""
    return ItemMeta(
        category=item.category or None,
        creator=item.creator or None,
        created_at_ms=item.created_at if item.created_at is not None else item.ts,
        available=item.op == "upsert" and item.available,
    )


def vector_source(item: Item) -> str:
    """Where the vector an item upsert leaves comes from, for its catalog record.

    Content wins over learned embeddings: an item's own embedding, or its tags, title or
    text (which the catalog does not hold, so a learned upsert could not restate them), make
    it :data:`VECTOR_CONTENT`. A vector hashed from category and creator alone only says
    "same category", and a learned upsert restates both fields: such an item, like one with
    no content at all, may get a learned vector.

    Examples:
        >>> vector_source(Item(item_id="i", ts=0, embedding=[1.0, 0.0]))
        'content'
        >>> vector_source(Item(item_id="i", ts=0, embedding=[1.0, 0.0], embedding_learned=True))
        'learned'
        >>> vector_source(Item(item_id="i", ts=0, category="news")), vector_source(
        ...     Item(item_id="i", ts=0, tags=["x"]))
        ('', 'content')
    """
    if item.embedding is not None:
        return VECTOR_LEARNED if item.embedding_learned else VECTOR_CONTENT
    if item.tags or item.title or item.text:
        return VECTOR_CONTENT
    return VECTOR_NONE


def item_vector(item: Item, dim: int) -> npt.NDArray[np.float32] | None:
    """The item's unit float32 vector, or None when it has neither embedding nor content.

    Examples:
        >>> v = item_vector(Item(item_id="i", ts=0, category="news", tags=["x"]), dim=8)
        >>> v.dtype, round(float(v @ v), 5)
        (dtype('float32'), 1.0)
        >>> item_vector(Item(item_id="i", ts=0, embedding=[3.0, 4.0]), dim=2).tolist()
        [0.6000000238418579, 0.800000011920929]
        >>> item_vector(Item(item_id="i", ts=0), dim=8) is None
        True
    """
    if item.embedding is not None:
        vector = np.asarray(item.embedding, dtype=np.float64)
        # Scale by the largest magnitude first: the norm of 1e200s overflows, of 1e-200s
        # underflows, and either would lose a valid direction.
        peak = float(np.abs(vector).max()) if vector.size else 0.0
        if not peak > 0:
            return None
        vector = vector / peak
        return (vector / float(np.linalg.norm(vector))).astype(np.float32)
    text = " ".join(part for part in (item.title, item.text) if part)
    vector32 = content_embedding(
        dim=dim, category=item.category, creator=item.creator, tags=item.tags, text=text or None
    )
    return vector32 if vector32.any() else None
