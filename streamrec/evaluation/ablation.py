"""Ablations scored in the same prequential pass as the funnel: each source alone, and the
funnel without the bandit or without the ranker.

Every variant is a real :class:`~serving.funnel.funnel.Funnel` over the same live state as
the funnel under evaluation, asked the same request at the same moment. Variants log no
impressions, so they never teach the bandit or the ranker: what they measure is what the
evaluated funnel's learning would give each of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from features.settings import LearningSettings
from serving.funnel.context import FeedRequest
from serving.funnel.funnel import Funnel
from serving.funnel.live import LiveReader
from serving.funnel.settings import FunnelSettings

#: Never reached: the variant always ranks by the cold blend.
_NEVER = 10**15


@dataclass
class Variant:
    """One ablated funnel, named as the report shows it."""

    name: str
    funnel: Funnel

    def items(self, request: FeedRequest) -> list[str]:
        """The variant's feed for ``request``, as item ids."""
        return [slot.candidate.item_id for slot in self.funnel.feed(request).slots]


def ablation_variants(
    live: LiveReader, funnel: FunnelSettings, learning: LearningSettings
) -> list[Variant]:
    """``source:<name>`` for every enabled source alone (no exploration: the source's own
    list as the blend orders it), ``no_bandit`` (equal source weights, no exploration) and
    ``no_ranker`` (the cold blend throughout)."""
    variants: list[Variant] = []
    enabled = [name for name, cfg in funnel.sources.items() if cfg.enabled]
    for name in enabled:
        only = {
            n: cfg.model_copy(update={"enabled": n == name}) for n, cfg in funnel.sources.items()
        }
        settings = funnel.model_copy(update={"sources": only, "explore_share": 0.0})
        variants.append(
            Variant(f"source:{name}", Funnel(live, settings, learning, concurrent=False))
        )
    no_bandit = funnel.model_copy(update={"learn_mix": False})
    variants.append(Variant("no_bandit", Funnel(live, no_bandit, learning, concurrent=False)))
    cold = learning.model_copy(update={"ranker_min_examples": _NEVER})
    variants.append(Variant("no_ranker", Funnel(live, funnel, cold, concurrent=False)))
    return variants
