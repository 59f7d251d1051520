"""The feed funnel stage by stage: sources, filters, scorer and slate, over live state that
the real worker processors wrote into the in-memory store (no broker, no HTTP)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from features.ann import BruteForceIndex
from features.bandit import Posterior
from features.batch import WriteBatch
from features.catalog import ItemMeta
from features.keys import Keys
from features.landmarks import Ranked
from features.ranker import RankerStore, RankerWeights
from features.settings import FeatureSettings, LearningSettings
from features.stores.memory_store import InMemoryStore
from serving.funnel.context import (
    Candidate,
    FeedContext,
    FeedRequest,
    interests,
    request_rng,
    segment_of,
)
from serving.funnel.filters import (
    BlockedCreatorFilter,
    Filter,
    ItemAgeFilter,
    NegativeFilter,
    RequestCategoryFilter,
    RestrictedCategoryFilter,
    SeenFilter,
    UnavailableFilter,
)
from serving.funnel.funnel import FeedResult, Funnel
from serving.funnel.live import UserState
from serving.funnel.ordering import SlateBuilder, Slot
from serving.funnel.scoring import BASE_FEATURES, Scorer, feature_names
from serving.funnel.settings import FunnelSettings, PinnedItem, SourceSettings
from serving.funnel.sources import SOURCES, CandidateSource
from streams.item_vectors import item_vector
from streams.schema import Interaction, Item
from streams.worker.pipeline import run_pipeline
from tests.reads import live_reader

NOW_MS = 1_700_000_000_000
NOW_S = NOW_MS / 1000.0
DAY_S = 86400.0
DIM = 4
FEATURES = FeatureSettings(embedding_dim=DIM)
LEARNING = LearningSettings()
KEYS = Keys("sr")
PRIOR = Posterior(LEARNING.bandit_prior_alpha, LEARNING.bandit_prior_beta, 0.0, 0.0)


# --- live state ----------------------------------------------------------------------------


def item(
    item_id: str,
    *,
    category: str | None = None,
    creator: str | None = None,
    embedding: list[float] | None = None,
    age_s: float = 2 * DAY_S,
    available: bool = True,
) -> Item:
    """An item announced ten minutes ago, created ``age_s`` before now."""
    return Item(
        item_id=item_id,
        ts=NOW_MS - 600_000,
        category=category,
        creator=creator,
        embedding=embedding,
        created_at=NOW_MS - int(age_s * 1000),
        available=available,
    )


def act(user: str, item_id: str, seconds_ago: float, kind: str = "click") -> Interaction:
    return Interaction(
        event_id=f"{user}-{item_id}-{kind}-{seconds_ago}",
        user_id=user,
        item_id=item_id,
        type=kind,  # type: ignore[arg-type]
        ts=NOW_MS - int(seconds_ago * 1000),
    )


class World:
    """Live state written by the worker's processors, and a reader over it with an exact
    index of the items' vectors (what a serving replica would hold)."""

    def __init__(
        self,
        items: Iterable[Item] = (),
        interactions: Iterable[Interaction] = (),
        *,
        with_index: bool = True,
    ) -> None:
        items, interactions = list(items), list(interactions)
        self.store = InMemoryStore()
        _, _, bus = run_pipeline(items, self.store, features=FEATURES, now_ms=NOW_MS)
        if interactions:
            # Items first, so every interaction finds its item's vector and category.
            run_pipeline(interactions, self.store, features=FEATURES, bus=bus, now_ms=NOW_MS)
        self.index = BruteForceIndex(DIM)
        for it in items:
            vector = item_vector(it, DIM)
            if it.available and vector is not None:
                self.index.upsert([it.item_id], [vector])
        index = self.index if with_index else None
        self.live = live_reader(self.store, KEYS, FEATURES, index)

    def context(
        self,
        user: str = "u",
        *,
        now_s: float = NOW_S,
        categories: Iterable[str] = (),
        item_id: str | None = None,
        request_id: str = "r1",
        settings: FunnelSettings | None = None,
    ) -> FeedContext:
        """The context the funnel builds for a request (user state and interests)."""
        settings = settings or FunnelSettings()
        state = self.live.user_state(user, settings.recent_items, now_s)
        request = FeedRequest(
            user, 10, now_s, request_id, categories=frozenset(categories), item_id=item_id
        )
        ctx = FeedContext(
            request,
            state,
            segment_of(state, None, settings.devices),
            request_rng(settings.seed, request_id),
        )
        metas = self.live.metas([i for i, _ in state.recent])
        ctx.interests, ctx.interest_shares = interests(state.recent, metas)
        return ctx

    def source(self, name: str, settings: FunnelSettings | None = None) -> CandidateSource:
        return SOURCES[name](self.live, settings or FunnelSettings())


def ids(ranked: Sequence[tuple[str, float]]) -> list[str]:
    return [i for i, _ in ranked]


def serve(world: World, settings: FunnelSettings, request: FeedRequest) -> FeedResult:
    """One feed through the whole funnel."""
    funnel = Funnel(world.live, settings, LEARNING)
    try:
        return funnel.feed(request)
    finally:
        funnel.close()


# Four directions in 4-d: "b" is close to "a", "c" sits between "a" and "d", "e" is apart.
VECTOR_ITEMS = [
    item("a", embedding=[1.0, 0.0, 0.0, 0.0], category="news"),
    item("b", embedding=[1.0, 0.2, 0.0, 0.0], category="news"),
    item("c", embedding=[1.0, 1.0, 0.0, 0.0], category="news"),
    item("d", embedding=[0.0, 1.0, 0.0, 0.0], category="sport"),
    item("e", embedding=[0.0, 0.0, 1.0, 0.0], category="sport"),
]


@pytest.fixture
def vector_world() -> World:
    # The user clicked "a" then "d": the session points between them, at "c".
    return World(VECTOR_ITEMS, [act("u", "a", 120), act("u", "d", 60)])


# --- sources ---------------------------------------------------------------------------------


def test_session_ann_returns_the_nearest_items_but_not_the_users_own(vector_world: World) -> None:
    got = vector_world.source("session_ann").candidates(vector_world.context(), 3)
    assert ids(got)[:2] == ["c", "b"]
    assert not {"a", "d"} & set(ids(got))
    assert got[0][1] > got[1][1] > got[2][1]


def test_after_a_session_gap_only_the_long_term_vector_retrieves(vector_world: World) -> None:
    later = vector_world.context(now_s=NOW_S + 2 * FEATURES.session_gap_s)
    assert later.user.session is None
    assert vector_world.source("session_ann").candidates(later, 3) == []
    got = vector_world.source("user_ann").candidates(later, 3)
    assert ids(got)[:2] == ["c", "b"]
    assert not {"a", "d"} & set(ids(got))


def test_covisitation_returns_what_others_went_on_to_after_the_users_items() -> None:
    world = World(
        [],
        [
            act("v1", "x", 300),
            act("v1", "y", 290),
            act("v2", "x", 300),
            act("v2", "z", 290),
            act("v3", "x", 300),
            act("v3", "z", 290),
            act("v4", "w", 300),
            act("v4", "y", 290),
            act("v5", "q", 300),  # q is followed by nothing, and nobody went from x to it
            act("u", "w", 200),
            act("u", "x", 100),  # the user went w → x: x is recent, so never proposed
        ],
    )
    got = world.source("covisitation").candidates(world.context(), 10)
    # After x (newest, weight 1): z twice, y once; after w (weight 1/2): y (and x, excluded).
    assert ids(got) == ["z", "y"]
    assert got[0][1] == pytest.approx(2 * got[1][1] / 1.5, rel=1e-6)


TRENDING_ITEMS = [
    *(item(f"s{n}", category="sport") for n in (1, 2, 3)),
    *(item(f"n{n}", category="news") for n in (0, 1, 2)),
]
TRENDING_CLICKS = [
    *(act(f"fan{n}", "s1", 100 + n) for n in range(6)),
    *(act(f"fan{n}", "s2", 100 + n) for n in range(5)),
    *(act(f"fan{n}", "s3", 100 + n) for n in range(4)),
    *(act(f"reader{n}", "n1", 100 + n) for n in range(2)),
    act("reader9", "n2", 100),
    act("u", "n0", 50),  # the user reads news
]


def test_trending_blends_the_users_categories_with_the_global_list() -> None:
    world = World(TRENDING_ITEMS, TRENDING_CLICKS)
    trending = world.source("trending")
    cold = trending.candidates(world.context("cold"), 3)
    assert ids(cold) == ["s1", "s2", "s3"]
    reader = world.context("u")
    assert reader.interests == ["news"]
    warm = trending.candidates(reader, 3)
    # The best news item beats the second-best sport item, which it trails globally.
    assert ids(warm) == ["n1", "s1", "s2"]


def test_trending_keeps_to_the_categories_a_request_names() -> None:
    world = World(TRENDING_ITEMS, TRENDING_CLICKS)
    got = world.source("trending").candidates(world.context("cold", categories=["news"]), 10)
    assert ids(got)[0] == "n1"
    assert set(ids(got)) == {"n0", "n1", "n2"}


def test_fresh_is_newest_first_and_leaves_out_unavailable_items() -> None:
    world = World(
        [
            item("f1", age_s=3600),
            item("f2", age_s=DAY_S),
            item("f3", age_s=600),
            item("f4", age_s=300, available=False),
        ]
    )
    got = world.source("fresh").candidates(world.context(), 10)
    assert ids(got) == ["f3", "f1", "f2"]


def test_popular_ranks_by_all_time_weighted_interactions() -> None:
    world = World(
        [],
        [
            act("a", "p1", 10, "purchase"),  # 8
            *(act(f"b{n}", "p2", 10) for n in range(3)),  # 3 clicks: 6
            act("c", "p3", 10, "like"),  # 3
            act("d", "p4", 10, "view"),  # 1
            act("e", "p5", 10, "dismiss"),  # 0: never popular
        ],
    )
    got = world.source("popular").candidates(world.context(), 10)
    assert got == [("p1", 8.0), ("p2", 6.0), ("p3", 3.0), ("p4", 1.0)]


def test_similar_item_returns_neighbours_of_the_seed_but_never_the_seed(
    vector_world: World,
) -> None:
    got = ids(vector_world.source("similar_item").candidates(vector_world.context(item_id="a"), 10))
    assert "a" not in got
    # Embedding neighbours (b before c) and what a user went on to after "a" (d).
    assert set(got[:3]) == {"b", "c", "d"}
    assert got.index("b") < got.index("c")


@pytest.mark.parametrize(
    ("name", "user", "item_id", "with_index"),
    [
        ("session_ann", "cold", None, True),  # no session
        ("session_ann", "u", None, False),  # no index
        ("user_ann", "cold", None, True),
        ("user_ann", "u", None, False),
        ("covisitation", "cold", None, True),  # no recent items
        ("similar_item", "u", None, True),  # no seed item
        ("similar_item", "u", "unknown", True),  # seed with no vector, no co-visits
    ],
)
def test_a_source_without_its_inputs_returns_nothing(
    name: str, user: str, item_id: str | None, with_index: bool
) -> None:
    world = World(VECTOR_ITEMS, [act("u", "a", 120), act("u", "d", 60)], with_index=with_index)
    assert world.source(name).candidates(world.context(user, item_id=item_id), 10) == []


@pytest.mark.parametrize("name", ["trending", "popular", "fresh", "covisitation"])
def test_global_sources_over_an_empty_store_return_nothing(name: str) -> None:
    world = World()
    assert world.source(name).candidates(world.context(), 10) == []


# --- the registry ----------------------------------------------------------------------------


def test_every_default_source_is_registered() -> None:
    assert set(FunnelSettings().sources) <= set(SOURCES)
    assert "similar_item" in SOURCES
    assert all(SOURCES[name].name == name for name in SOURCES)


# One contract over every registered source: a new source gets it by being registered.
CONTRACT_WORLDS = {
    "warm": lambda: World(
        VECTOR_ITEMS,
        [act("u", "a", 120), act("u", "d", 60), act("v", "a", 90), act("v", "b", 30)],
    ),
    "empty": lambda: World(),
}


@pytest.mark.parametrize("world_name", sorted(CONTRACT_WORLDS))
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_registered_source_keeps_the_source_contract(name: str, world_name: str) -> None:
    world = CONTRACT_WORLDS[world_name]()
    source = world.source(name)
    assert source.name == name and SOURCES[name] is type(source)
    for k in (0, 1, 3, 50):
        ctx = world.context("u", item_id="a")
        got = source.candidates(ctx, k)
        assert len(got) <= k
        assert len({i for i, _ in got}) == len(got), "an item proposed twice"
        assert all(isinstance(i, str) and np.isfinite(s) for i, s in got)
        assert [s for _, s in got] == sorted((s for _, s in got), reverse=True), "not best first"
        assert got == source.candidates(world.context("u", item_id="a"), k), "not repeatable"


def test_a_source_runs_on_the_pool_unless_it_says_it_is_local() -> None:
    class Plain(CandidateSource):
        name = "plain_contract_probe"

        def _candidates(self, ctx: FeedContext, k: int) -> Ranked:
            return []

    try:
        assert Plain.local is False  # its time budget holds without it having to ask
    finally:
        SOURCES.pop(Plain.name, None)


@pytest.fixture
def echo_source() -> Iterator[type[CandidateSource]]:
    assert "echo" not in SOURCES

    class EchoSource(CandidateSource):
        name = "echo"

        def _candidates(self, ctx: FeedContext, k: int) -> Ranked:
            return [("e1", 3.0), ("e2", 2.0), ("e3", 1.0)]

    try:
        yield EchoSource
    finally:
        SOURCES.pop("echo", None)


def test_a_new_source_is_a_class_plus_a_config_entry(
    echo_source: type[CandidateSource],
) -> None:
    assert SOURCES["echo"] is echo_source
    world = World()
    settings = FunnelSettings(sources={"echo": SourceSettings(k=2)}, exploration_slots=[])
    result = serve(world, settings, FeedRequest("u", 5, NOW_S, "r1"))
    # k=2 in config: the source's third item never reaches the feed.
    assert sorted(s.candidate.item_id for s in result.slots) == ["e1", "e2"]
    assert {s.source for s in result.slots} == {"echo"}
    assert result.feature_names == feature_names(["echo"])


def test_a_feed_the_filters_leave_short_is_backfilled_by_the_fallback_sources() -> None:
    items = [item(f"p{n}", category="news") for n in range(12)]
    # Everyone views p0..p11 (p0 most); the user has seen the top three.
    crowd = [act(f"x{n}", f"p{i}", 300) for n in range(3) for i in range(12 - n * 4)]
    world = World(items, [*crowd, *(act("u", f"p{i}", 200, "view") for i in range(3))])
    request = FeedRequest("u", 6, NOW_S, "r1")
    primary = {"trending": SourceSettings(k=4), "popular": SourceSettings(enabled=False)}
    short = serve(world, FunnelSettings(sources=primary, fallback=[]), request)
    assert len(short.slots) == 1  # trending's top four, less the three seen
    filled = serve(world, FunnelSettings(sources=primary, exploration_slots=[]), request)
    assert len(filled.slots) == 6
    (found,) = short.slots
    assert filled.slots[0].candidate.item_id == found.candidate.item_id == "p3"
    assert filled.slots[0].source == found.source == "trending"  # it keeps its slot
    assert not {s.candidate.item_id for s in filled.slots} & {"p0", "p1", "p2"}
    assert filled.trace.sources["fallback:popular"]["candidates"] == 12
    assert {s.source for s in filled.slots} <= {"trending", "popular"}


def test_no_fallback_runs_while_the_sources_fill_the_feed() -> None:
    items = [item(f"p{n}", category="news") for n in range(12)]
    world = World(items, [act(f"x{n}", f"p{n}", 300) for n in range(12)])
    settings = FunnelSettings(sources={"trending": SourceSettings(k=12)})
    result = serve(world, settings, FeedRequest("u", 6, NOW_S, "r1"))
    assert "fallback:popular" not in result.trace.sources


def test_the_funnel_refuses_an_unknown_fallback_source_by_name() -> None:
    with pytest.raises(ValueError, match="funnel.fallback"):
        Funnel(World().live, FunnelSettings(fallback=["nope_source"]), LEARNING)


def test_the_funnel_refuses_an_unknown_source_by_name() -> None:
    settings = FunnelSettings(
        sources={"trending": SourceSettings(), "nope_source": SourceSettings()}
    )
    with pytest.raises(ValueError, match="nope_source"):
        Funnel(World().live, settings, LEARNING)


# --- filters ---------------------------------------------------------------------------------

OLD_MS = NOW_MS - int(30 * DAY_S * 1000)


def cand(
    item_id: str,
    category: str | None = "news",
    creator: str | None = "c",
    *,
    age_s: float | None = None,
    available: bool = True,
    known: bool = True,
) -> Candidate:
    created = OLD_MS if age_s is None else NOW_MS - int(age_s * 1000)
    meta = ItemMeta(category, creator, created, available) if known else None
    return Candidate(item_id, {"trending": 1.0}, meta)


def filter_ctx(
    categories: Iterable[str] = (), exclude: Iterable[str] = (), request_id: str = "r1"
) -> FeedContext:
    request = FeedRequest(
        "u",
        10,
        NOW_S,
        request_id,
        categories=frozenset(categories),
        exclude_categories=frozenset(exclude),
    )
    return FeedContext(request, UserState(None, None, []), "new|other", request_rng(0, request_id))


def kept(f: Filter, ctx: FeedContext, candidates: list[Candidate]) -> list[str]:
    return [c.item_id for c in f.apply(ctx, candidates)]


MIXED = [
    cand("n1", "news"),
    cand("s1", "sport"),
    cand("n2", "news"),
    cand("none", None),
    cand("stub", known=False),
]


def test_request_categories_allow_only_the_named_ones() -> None:
    ctx = filter_ctx(categories=["news"])
    assert kept(RequestCategoryFilter(), ctx, MIXED) == ["n1", "n2"]
    assert ctx.trace.removed == {"request_categories": 3}


def test_request_exclusions_deny_only_the_named_ones() -> None:
    ctx = filter_ctx(exclude=["sport"])
    assert kept(RequestCategoryFilter(), ctx, MIXED) == ["n1", "n2", "none", "stub"]
    assert ctx.trace.removed == {"request_categories": 1}


def test_a_request_without_categories_keeps_everything() -> None:
    ctx = filter_ctx()
    assert kept(RequestCategoryFilter(), ctx, MIXED) == [c.item_id for c in MIXED]
    assert ctx.trace.removed == {"request_categories": 0}


def test_unavailable_items_go_and_unknown_ones_stay() -> None:
    ctx = filter_ctx()
    candidates = [cand("ok"), cand("gone", available=False), cand("stub", known=False)]
    assert kept(UnavailableFilter(), ctx, candidates) == ["ok", "stub"]
    assert ctx.trace.removed == {"unavailable": 1}


def test_seen_and_negative_items_go() -> None:
    ctx = filter_ctx()
    candidates = [cand("a"), cand("b"), cand("c"), cand("d")]
    after_seen = SeenFilter({"a", "zz"}).apply(ctx, candidates)
    assert kept(NegativeFilter({"c"}), ctx, after_seen) == ["b", "d"]
    assert ctx.trace.removed == {"seen": 1, "dismissed_or_skipped": 1}


def test_what_the_user_clicked_or_dismissed_leaves_their_feed() -> None:
    world = World(
        [],
        [
            act("bg1", "clicked", 300),
            act("bg2", "dismissed", 300),
            act("bg3", "other", 300),
            act("u", "clicked", 30),
            act("u", "dismissed", 20, "dismiss"),
        ],
    )
    settings = FunnelSettings(sources={"popular": SourceSettings()}, exploration_slots=[])
    result = serve(world, settings, FeedRequest("u", 10, NOW_S, "r1"))
    assert [s.candidate.item_id for s in result.slots] == ["other"]
    assert result.trace.removed["seen"] == 2  # a dismissal is an interaction too
    assert result.trace.removed["dismissed_or_skipped"] == 0  # already gone as seen
    cold = serve(world, settings, FeedRequest("v", 10, NOW_S, "r1"))
    assert {s.candidate.item_id for s in cold.slots} == {"clicked", "dismissed", "other"}


def test_blocked_creators_go() -> None:
    ctx = filter_ctx()
    f = BlockedCreatorFilter(FunnelSettings(blocked_creators=["spam"]))
    candidates = [cand("a", creator="spam"), cand("b", creator="ok"), cand("c", creator=None)]
    assert kept(f, ctx, candidates) == ["b", "c"]
    assert ctx.trace.removed == {"blocked_creators": 1}


def test_restricted_categories_go_unless_the_request_names_them() -> None:
    f = RestrictedCategoryFilter(FunnelSettings(restricted_categories=["adult"]))
    candidates = [cand("x", "adult"), cand("n", "news")]
    plain = filter_ctx()
    assert kept(f, plain, candidates) == ["n"]
    assert plain.trace.removed == {"restricted_categories": 1}
    asked = filter_ctx(categories=["adult", "news"])
    assert kept(f, asked, candidates) == ["x", "n"]
    assert asked.trace.removed == {"restricted_categories": 0}


def test_items_outside_the_age_limits_go() -> None:
    f = ItemAgeFilter(FunnelSettings(min_item_age_s=600, max_item_age_s=7 * DAY_S))
    ctx = filter_ctx()
    candidates = [
        cand("too_new", age_s=60),
        cand("ok_young", age_s=3600),
        cand("ok_old", age_s=6 * DAY_S),
        cand("too_old", age_s=8 * DAY_S),
        cand("stub", known=False),
    ]
    assert kept(f, ctx, candidates) == ["ok_young", "ok_old", "stub"]
    assert ctx.trace.removed == {"item_age": 2}


# --- scoring ---------------------------------------------------------------------------------


def scored(world: World, ctx: FeedContext, scorer: Scorer) -> dict[str, Candidate]:
    candidates = [
        Candidate("c", {"session_ann": 0.9}, ItemMeta("news", "x", OLD_MS, True)),
        Candidate("e", {"trending": 1.0}, ItemMeta("sport", "y", OLD_MS, True)),
    ]
    scorer.score(ctx, candidates)
    return {c.item_id: c for c in candidates}


def test_features_have_an_indicator_and_a_rank_per_source_then_the_base_features(
    vector_world: World,
) -> None:
    sources = ["session_ann", "trending"]
    scorer = Scorer(vector_world.live, sources, LEARNING.ranker_min_examples)
    assert scorer.columns == [
        "source:session_ann",
        "source:trending",
        "rank:session_ann",
        "rank:trending",
        *BASE_FEATURES,
    ]
    ctx = vector_world.context()
    by_id = scored(vector_world, ctx, scorer)
    col = {name: n for n, name in enumerate(scorer.columns)}
    c, e = by_id["c"].features, by_id["e"].features
    assert c is not None and e is not None
    assert c.shape == e.shape == (len(scorer.columns),)
    assert (c[col["source:session_ann"]], c[col["source:trending"]]) == (1.0, 0.0)
    assert (e[col["source:session_ann"]], e[col["source:trending"]]) == (0.0, 1.0)
    # No source ranked these hand-made candidates: every reciprocal rank is 0.
    assert c[col["rank:session_ann"]] == c[col["rank:trending"]] == 0.0
    # The user touched one news and one sport item: each category has half their interest.
    assert c[col["category_affinity"]] == pytest.approx(0.5)
    assert c[col["log_age_hours"]] == pytest.approx(np.log1p(30 * 24), rel=1e-4)


def test_an_item_closer_to_the_session_scores_higher(vector_world: World) -> None:
    scorer = Scorer(vector_world.live, ["session_ann", "trending"], LEARNING.ranker_min_examples)
    ctx = vector_world.context()
    by_id = scored(vector_world, ctx, scorer)
    col = scorer.columns.index("cos_session")
    c, e = by_id["c"], by_id["e"]
    assert c.features is not None and e.features is not None
    assert c.features[col] > 0.99 > 0.01 > abs(float(e.features[col]))
    assert c.score > e.score
    assert ctx.trace.scorer["model"] == "heuristic"


def save_ranker(world: World, examples: int, weights: dict[str, float]) -> None:
    batch = WriteBatch()
    RankerStore(KEYS).save(batch, "p0", RankerWeights(weights, -1.0, examples, 0))
    world.store.commit(batch)


def test_the_scorer_switches_to_the_ranker_once_it_learned_enough(vector_world: World) -> None:
    scorer = Scorer(vector_world.live, ["session_ann", "trending"], LEARNING.ranker_min_examples)
    save_ranker(vector_world, LEARNING.ranker_min_examples - 1, {"cos_session": 4.0})
    ctx = vector_world.context()
    scored(vector_world, ctx, scorer)
    assert ctx.trace.scorer["model"] == "heuristic"

    save_ranker(vector_world, LEARNING.ranker_min_examples, {"cos_session": 4.0})
    ctx = vector_world.context()
    by_id = scored(vector_world, ctx, scorer)
    assert ctx.trace.scorer == {"model": "ranker", "examples": LEARNING.ranker_min_examples}
    # Click probabilities now: sigmoid(4·cos − 1).
    assert by_id["c"].score == pytest.approx(1 / (1 + np.exp(-3.0)), rel=1e-3)
    assert 0.0 < by_id["e"].score < by_id["c"].score < 1.0


def version_of(world: World, ctx: FeedContext, scorer: Scorer) -> str:
    candidates = [Candidate("c", {"session_ann": 0.9}, ItemMeta("news", "x", OLD_MS, True))]
    return scorer.score(ctx, candidates)


def test_the_policy_version_names_the_model_that_actually_scored(vector_world: World) -> None:
    scorer = Scorer(vector_world.live, ["session_ann", "trending"], min_examples=10)
    save_ranker(vector_world, 10, {"cos_session": 4.0})
    assert version_of(vector_world, vector_world.context(), scorer) == "ranker@10"
    save_ranker(vector_world, 3, {"cos_session": 4.0})  # e.g. parts reset or skipped
    ctx = vector_world.context()
    assert version_of(vector_world, ctx, scorer) == "heuristic"
    assert ctx.trace.scorer["model"] == "heuristic"


# --- ordering --------------------------------------------------------------------------------


def slate_settings(**overrides: Any) -> FunnelSettings:
    """No exploration slot unless a test asks for one."""
    return FunnelSettings(**{"exploration_slots": [], **overrides})


def ordered(
    candidates: list[Candidate],
    k: int,
    settings: FunnelSettings,
    *,
    posteriors: dict[str, Posterior] | None = None,
    request_id: str = "r1",
    pinned: dict[str, Candidate] | None = None,
) -> tuple[list[Slot], FeedContext]:
    ctx = filter_ctx(request_id=request_id)
    ctx.rng = request_rng(settings.seed, request_id)
    builder = SlateBuilder(settings, draws=LEARNING.bandit_draws, floor=LEARNING.bandit_floor)
    slots = builder.build(ctx, candidates, k, posteriors or {}, PRIOR, pinned=pinned)
    return slots, ctx


def pool(
    source: str,
    n: int,
    *,
    prefix: str | None = None,
    creator: str | None = None,
    top: float = 1.0,
    age_s: float = 30 * DAY_S,
) -> list[Candidate]:
    """``n`` scored candidates of one source, best first, each by its own creator unless
    ``creator`` is given."""
    prefix = prefix or source
    return [
        Candidate(
            f"{prefix}{i}",
            {source: top - i * 0.01},
            ItemMeta("x", creator or f"{prefix}-creator{i}", NOW_MS - int(age_s * 1000), True),
            score=top - i * 0.01,
        )
        for i in range(n)
    ]


def summary(slots: list[Slot]) -> list[tuple[str, str, float]]:
    return [(s.candidate.item_id, s.source, s.propensity) for s in slots]


THREE_SOURCES = pool("A", 30) + pool("B", 30) + pool("C", 30)
MIXED_POSTERIORS = {
    "A": Posterior(5.0, 30.0, 34.0, 4.0),
    "B": Posterior(3.0, 40.0, 42.0, 2.0),
}


def test_a_pinned_item_takes_its_position_with_certainty() -> None:
    settings = slate_settings(pinned=[PinnedItem(item_id="promo", position=3)])
    promo = Candidate("promo", {"pinned": 1.0}, ItemMeta("ads", "house", OLD_MS, True))
    slots, _ = ordered(THREE_SOURCES, 8, settings, pinned={"promo": promo})
    assert len(slots) == 8
    assert summary(slots)[3] == ("promo", "pinned", 1.0)
    assert [s.candidate.item_id for s in slots].count("promo") == 1
    # A pinned item the filters removed (absent from ``pinned``) leaves its slot to the bandit.
    slots, _ = ordered(THREE_SOURCES, 8, settings, pinned={})
    assert len(slots) == 8 and "promo" not in [s.candidate.item_id for s in slots]


def test_a_pinned_item_that_a_source_also_found_still_sits_at_its_position() -> None:
    settings = slate_settings(pinned=[PinnedItem(item_id="promo", position=2)])
    meta = ItemMeta("ads", "house", OLD_MS, True)
    retrieved = Candidate("promo", {"A": 9.0}, meta, score=9.0)  # the best candidate of A
    promo = Candidate("promo", {"pinned": 1.0}, meta)
    slots, _ = ordered([retrieved, *pool("A", 10)], 5, settings, pinned={"promo": promo})
    assert [s.candidate.item_id for s in slots].index("promo") == 2
    assert summary(slots)[2] == ("promo", "pinned", 1.0)


def test_the_exploration_slot_gets_the_newest_young_item() -> None:
    settings = slate_settings(exploration_slots=[2], exploration_max_age_s=DAY_S)
    young = [
        Candidate("y_2h", {"A": 0.1}, ItemMeta("x", "y1", NOW_MS - 7_200_000, True), score=0.1),
        Candidate("y_1h", {"A": 0.1}, ItemMeta("x", "y2", NOW_MS - 3_600_000, True), score=0.1),
        Candidate("y_3d", {"A": 0.1}, ItemMeta("x", "y3", OLD_MS, True), score=0.1),
    ]
    slots, _ = ordered(pool("A", 10) + pool("B", 10) + young, 5, settings)
    assert summary(slots)[2] == ("y_1h", "explore", 1.0)
    assert {s.source for n, s in enumerate(slots) if n != 2} <= {"A", "B"}
    # With nothing young enough, the bandit fills the exploration slot like any other.
    slots, _ = ordered(pool("A", 10) + pool("B", 10) + young[2:], 5, settings)
    assert len(slots) == 5 and slots[2].source in {"A", "B"}


def test_no_creator_exceeds_its_cap() -> None:
    settings = slate_settings(max_per_creator=2)
    prolific = pool("A", 10, creator="prolific", top=5.0)  # the best items, one creator
    others = pool("B", 10)
    slots, ctx = ordered(prolific + others, 8, settings, posteriors={"A": Posterior(50, 5, 0, 0)})
    creators = Counter(s.candidate.meta.creator for s in slots if s.candidate.meta)
    assert creators["prolific"] == 2
    assert max(creators.values()) <= 2
    assert ctx.trace.ordering["skipped_by_caps"] > 0


def test_the_creator_cap_holds_for_the_exploration_slot_too() -> None:
    settings = slate_settings(max_per_creator=1, exploration_slots=[1])
    young_ms = NOW_MS - 3_600_000
    same_creator = [
        Candidate(f"y{i}", {"A": 1.0 - i}, ItemMeta("x", "busy", young_ms - i, True), score=1.0 - i)
        for i in range(3)
    ]
    slots, _ = ordered(same_creator + pool("B", 10, top=0.5), 4, settings)
    creators = Counter(s.candidate.meta.creator for s in slots if s.candidate.meta)
    assert creators["busy"] <= 1


def test_caps_never_cost_the_feed_a_slot_while_eligible_items_remain() -> None:
    settings = slate_settings(max_per_creator=1)
    prolific = pool("A", 5, creator="prolific", top=5.0)
    others = pool("B", 5)  # five different creators: enough to fill the feed
    slots, _ = ordered(prolific + others, 4, settings, posteriors={"A": Posterior(200, 50, 0, 0)})
    assert len(slots) == 4
    assert [s.candidate.meta.creator for s in slots if s.candidate.meta].count("prolific") == 1
    # Once A can place nothing more, B is the only source that can fill a slot: certain.
    after = slots[[s.source for s in slots].index("A") + 1 :]
    assert after and all((s.source, s.propensity) == ("B", 1.0) for s in after)


def test_no_item_is_placed_twice() -> None:
    shared = [
        Candidate(
            f"i{n}",
            {s: 1.0 for s in ("A", "B", "C")[: 1 + n % 3]},
            ItemMeta("x", f"c{n}", OLD_MS, True),
            score=1.0 - n / 100,
        )
        for n in range(12)
    ]
    settings = slate_settings(exploration_slots=[3])
    slots, _ = ordered(shared, 12, settings)
    placed = [s.candidate.item_id for s in slots]
    assert len(placed) == len(set(placed)) == 12


def test_logged_propensities_are_the_probabilities_the_slot_was_drawn_from() -> None:
    # All exploration: every slot is Thompson's draw over the sources.
    settings = slate_settings(explore_share=1.0)
    slots, ctx = ordered(THREE_SOURCES, 15, settings, posteriors=MIXED_POSTERIORS)
    probs = ctx.trace.ordering["first_slot_probabilities"]
    assert set(probs) == {"A", "B", "C"}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-9)
    assert min(probs.values()) >= LEARNING.bandit_floor / 3 - 1e-12
    assert len(slots) == 15
    # Every source keeps plenty of candidates, so every slot is drawn from this distribution.
    for slot in slots:
        assert 0.0 < slot.propensity <= 1.0
        assert slot.propensity == probs[slot.source]
    assert len({s.source for s in slots}) >= 2


def test_the_same_request_gets_the_same_slate_and_another_may_not() -> None:
    settings = slate_settings(explore_share=0.5)
    first, _ = ordered(THREE_SOURCES, 10, settings, request_id="same")
    again, _ = ordered(THREE_SOURCES, 10, settings, request_id="same")
    assert summary(first) == summary(again)
    others = [
        summary(ordered(THREE_SOURCES, 10, settings, request_id=f"other-{n}")[0]) for n in range(5)
    ]
    assert any(o != summary(first) for o in others)
    reseeded, _ = ordered(
        THREE_SOURCES, 10, slate_settings(seed=7, explore_share=0.5), request_id="same"
    )
    assert [s.source for s in reseeded] != [s.source for s in first]


@pytest.mark.parametrize("winner", ["A", "B"])
def test_a_source_with_a_much_better_posterior_fills_most_explored_slots(winner: str) -> None:
    posteriors = {winner: Posterior(alpha=200.0, beta=50.0, shown=250.0, rewards=200.0)}
    settings = slate_settings(explore_share=1.0)
    slots, ctx = ordered(THREE_SOURCES, 20, settings, posteriors=posteriors)
    shares = Counter(s.source for s in slots)
    assert shares[winner] >= 16
    assert ctx.trace.ordering["first_slot_probabilities"][winner] > 0.9


def test_without_exploration_the_slate_is_the_blended_order_whatever_the_posteriors() -> None:
    mixed = pool("A", 10, top=1.0) + pool("B", 10, prefix="b", top=0.95)
    posteriors = {"B": Posterior(alpha=200.0, beta=50.0, shown=250.0, rewards=200.0)}
    settings = slate_settings(explore_share=0.0, mmr_lambda=1.0, freshness_boost=0.0)
    slots, _ = ordered(mixed, 12, settings, posteriors=posteriors)
    best = sorted(mixed, key=lambda c: (-c.score, c.item_id))[:12]
    assert [s.candidate.item_id for s in slots] == [c.item_id for c in best]
    assert all(s.propensity == 1.0 and s.source in s.candidate.sources for s in slots)


def test_each_slot_logs_the_mixture_it_was_drawn_from() -> None:
    explore = 0.2
    settings = slate_settings(explore_share=explore)
    slots, _ = ordered(THREE_SOURCES, 15, settings, posteriors=MIXED_POSTERIORS)
    for slot in slots:
        probs = slot.probabilities
        assert probs is not None and set(probs) == {"A", "B", "C"}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-9)
        assert slot.propensity == probs[slot.source]
        # One source carries the blend's pick: at least 1 - explore of the mass.
        assert max(probs.values()) >= 1.0 - explore
        assert min(probs.values()) >= explore * LEARNING.bandit_floor / 3 - 1e-12


@pytest.mark.parametrize(
    "score",
    [
        0.5,
        pytest.param(
            -0.5,
        ),
    ],
)
def test_the_freshness_boost_favours_a_new_item_over_an_equal_old_one(score: float) -> None:
    candidates = [
        Candidate("old", {"A": 1.0}, ItemMeta("x", "c1", OLD_MS, True), score=score),
        Candidate("new", {"A": 1.0}, ItemMeta("x", "c2", NOW_MS - 60_000, True), score=score),
    ]
    slots, _ = ordered(candidates, 1, slate_settings(freshness_boost=0.2))
    assert slots[0].candidate.item_id == "new"


# --- the stages together -----------------------------------------------------------------------


def test_a_pinned_item_respects_the_categories_the_request_asked_for() -> None:
    world = World(
        [item("promo", category="sport"), *(item(f"n{i}", category="news") for i in range(5))],
        [act(f"r{i}", f"n{i}", 60) for i in range(5)],
    )
    settings = FunnelSettings(
        sources={"popular": SourceSettings()},
        pinned=[PinnedItem(item_id="promo", position=0)],
        exploration_slots=[],
    )
    result = serve(
        world, settings, FeedRequest("u", 4, NOW_S, "r1", categories=frozenset({"news"}))
    )
    categories = {s.candidate.meta.category if s.candidate.meta else None for s in result.slots}
    assert categories == {"news"}


def test_dismissing_a_category_does_not_make_it_an_interest() -> None:
    world = World(
        [
            *(item(f"s{i}", category="sport") for i in range(6)),
            *(item(f"n{i}", category="news") for i in range(4)),
        ],
        [
            *(act("u", f"s{i}", 100 - i, "dismiss") for i in range(3)),
            act("u", "n0", 50),
            *(act(f"bg{i}", f"s{i}", 200) for i in range(3, 6)),
            *(act(f"bg{i}", f"n{i}", 200) for i in range(1, 4)),
        ],
    )
    settings = FunnelSettings(sources={"popular": SourceSettings()}, exploration_slots=[])
    result = serve(world, settings, FeedRequest("u", 6, NOW_S, "r1"))
    col = result.feature_names.index("category_affinity")
    affinity = {
        s.candidate.meta.category: float(s.candidate.features[col])
        for s in result.slots
        if s.candidate.meta is not None and s.candidate.features is not None
    }
    assert affinity["news"] > 0.0
    assert affinity["sport"] == 0.0


def test_a_negative_seed_is_refused_by_config_rather_than_by_every_feed() -> None:
    try:
        settings = FunnelSettings(seed=-1)
    except ValidationError:
        return
    request_rng(settings.seed, "r1")
