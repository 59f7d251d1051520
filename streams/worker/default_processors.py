"""The processors a worker runs, in order: one list for the Kafka worker, the embedded mode,
replays and tests."""

from __future__ import annotations

from collections.abc import Sequence

from features.catalog import Catalog
from features.covisitation import Covisitation
from features.keys import Keys
from features.seen import SeenSet
from features.settings import FeatureSettings, LearningSettings
from features.trending import Trending
from streams.worker.feedback import FeedbackProcessor
from streams.worker.processors import (
    CatalogProcessor,
    CovisitationProcessor,
    EmbeddingProcessor,
    Processor,
    SeenProcessor,
    TrendingProcessor,
)


def default_processors(
    keys: Keys, settings: FeatureSettings, learning: LearningSettings | None = None
) -> Sequence[Processor]:
    """The processors every worker runs, in order."""
    seen = SeenSet(keys, max_items=settings.seen_max_items, ttl_s=settings.seen_ttl_s)
    return (
        CatalogProcessor(Catalog(keys)),
        TrendingProcessor(Trending(keys, settings.half_lives_s, settings.event_weights)),
        CovisitationProcessor(
            Covisitation.from_settings(keys, settings),
            seen,
        ),
        SeenProcessor(seen),
        EmbeddingProcessor(keys, settings),
        FeedbackProcessor(keys, learning or LearningSettings()),
    )
