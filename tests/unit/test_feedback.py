"""Served feeds joined to clicks: attribution, window closing, bandit counts, ranker parts."""

from __future__ import annotations

import pytest

from features.bandit import SourceBandit
from features.keys import Keys
from features.ranker import RankerStore
from features.settings import LearningSettings
from features.stores.memory_store import InMemoryStore
from streams.io.bus import InProcessBus
from streams.schema import Event, Impression, ImpressionSlot, Interaction
from streams.settings import TopicSettings
from streams.worker.pipeline import run_pipeline
from tests.reads import posteriors

KEYS = Keys("sr")
LEARNING = LearningSettings(attribution_window_s=60.0, bandit_half_life_s=1e9)
NAMES = ["cos_session", "source:trending"]
T0 = 1_700_000_000_000


def impression(request_id: str, ts: int, user: str = "u", segment: str = "new|web") -> Impression:
    return Impression(
        request_id=request_id,
        user_id=user,
        ts=ts,
        policy="thompson",
        segment=segment,
        feature_names=NAMES,
        slots=[
            ImpressionSlot(
                item_id="a",
                position=0,
                source="trending",
                score=0.9,
                propensity=0.6,
                features=[0.9, 1.0],
            ),
            ImpressionSlot(
                item_id="b",
                position=1,
                source="fresh",
                score=0.1,
                propensity=0.4,
                features=[0.1, 0.0],
            ),
        ],
    )


def click(item: str, ts: int, request_id: str | None = None, user: str = "u") -> Interaction:
    return Interaction(
        event_id=f"c-{item}-{ts}",
        user_id=user,
        item_id=item,
        type="click",
        ts=ts,
        request_id=request_id,
    )


def view(ts: int, user: str = "u") -> Interaction:
    """Any interaction moves its partition's clicks clock, which a feed's closing waits for."""
    return Interaction(event_id=f"v-{ts}", user_id=user, item_id="zz", type="view", ts=ts)


class Stream:
    """Phases applied one after another to one store, through one bus."""

    def __init__(self) -> None:
        self.store = InMemoryStore()
        self.bus = InProcessBus(partitions=1, topics=TopicSettings(partitions=1))

    def apply(self, events: list[Event]) -> None:
        run_pipeline(events, self.store, learning=LEARNING, bus=self.bus, now_ms=T0 + 10**7)

    def posteriors(self, segment: str = "new|web") -> dict[str, tuple[float, float]]:
        bandit = SourceBandit(KEYS, half_life_s=1e9, prior_alpha=1.0, prior_beta=20.0)
        found = posteriors(bandit, self.store, segment, now_s=T0 / 1000)
        return {s: (round(p.shown, 6), round(p.rewards, 6)) for s, p in found.items()}


def test_a_click_with_its_request_id_is_a_reward_once_the_window_closes() -> None:
    stream = Stream()
    stream.apply([impression("r1", T0)])
    stream.apply([click("a", T0 + 5_000, "r1"), click("a", T0 + 6_000, "r1")])
    assert stream.posteriors() == {}  # nothing is learned while the window is open
    # The partition's clocks (impressions and clicks) pass r1's window.
    stream.apply([impression("r2", T0 + 61_000), view(T0 + 61_000)])
    assert stream.posteriors() == {"trending": (1.0, 1.0), "fresh": (1.0, 0.0)}
    assert stream.store.zcard(KEYS.impressions("u")) == 1  # r2 is still open


def test_a_click_without_request_id_goes_to_the_latest_feed_that_showed_the_item() -> None:
    stream = Stream()
    stream.apply([impression("r1", T0), impression("r2", T0 + 1_000)])
    stream.apply([click("b", T0 + 2_000)])
    stream.apply([impression("r3", T0 + 70_000), view(T0 + 70_000)])
    # r1 and r2 each count two pulls; only r2's "b" was clicked.
    assert stream.posteriors() == {"trending": (2.0, 0.0), "fresh": (2.0, 1.0)}


def test_clicks_outside_the_window_or_by_someone_else_do_not_count() -> None:
    stream = Stream()
    stream.apply([impression("r1", T0)])
    stream.apply([click("a", T0 + 61_000, "r1"), click("a", T0 + 1_000, "r1", user="v")])
    stream.apply([impression("r2", T0 + 200_000)])
    assert stream.posteriors() == {"trending": (1.0, 0.0), "fresh": (1.0, 0.0)}


def test_a_repeated_impression_is_counted_once() -> None:
    stream = Stream()
    stream.apply([impression("r1", T0), impression("r1", T0)])
    stream.apply([impression("r2", T0 + 61_000)])
    assert stream.posteriors() == {"trending": (1.0, 0.0), "fresh": (1.0, 0.0)}


def test_segments_are_learned_apart() -> None:
    stream = Stream()
    stream.apply([impression("r1", T0, segment="returning|mobile")])
    stream.apply([impression("r2", T0 + 61_000)])
    assert stream.posteriors("returning|mobile") == {"trending": (1.0, 0.0), "fresh": (1.0, 0.0)}
    assert stream.posteriors("new|web") == {}


def test_the_ranker_learns_from_the_logged_features() -> None:
    stream = Stream()
    events: list[Event] = []
    for n in range(40):
        ts = T0 + n * 120_000
        events += [impression(f"r{n}", ts), click("a", ts + 1_000, f"r{n}")]
        stream.apply(events)
        events = []
    weights = RankerStore(KEYS).load(stream.store)
    assert weights.examples == 78  # 39 closed feeds × 2 slots; the last is still open
    assert weights.positives == 39
    # Only slot "a" (high cos_session, from trending) was ever clicked.
    assert weights.weights["cos_session"] > 0
    assert weights.weights["source:trending"] > 0
    assert stream.store.dump(KEYS.impression("r0")) == {}


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_the_same_stream_gives_the_same_state_however_it_is_cut(cut: int) -> None:
    events: list[Event] = []
    for n in range(6):
        ts = T0 + n * 30_000
        events += [impression(f"r{n}", ts), click("b" if n % 2 else "a", ts + 500, f"r{n}")]
    whole, split = Stream(), Stream()
    whole.apply(events)
    for start in range(0, len(events), cut * 2):
        split.apply(events[start : start + cut * 2])
    assert whole.posteriors() == split.posteriors()


@pytest.mark.parametrize("with_request_id", [True, False])
def test_a_click_applied_before_its_impression_still_counts(with_request_id: bool) -> None:
    stream = Stream()
    stream.apply([click("b", T0 + 2_000, "r1" if with_request_id else None)])
    assert stream.store.zcard(KEYS.pending_clicks("u")) == 1
    stream.apply([impression("r1", T0)])
    assert stream.store.zcard(KEYS.pending_clicks("u")) == 0
    stream.apply([impression("r2", T0 + 61_000), view(T0 + 61_000)])
    assert stream.posteriors() == {"trending": (1.0, 0.0), "fresh": (1.0, 1.0)}


def test_a_backlog_of_feeds_applied_before_its_clicks_closes_no_feed_without_them() -> None:
    """After a restart the impressions backlog may be fetched before the clicks of the same
    span: the feeds must still close with their clicks, as they did live."""
    warm: list[Event] = [impression("r0", T0), click("a", T0 + 500, "r0")]
    feeds, clicks = [], []
    for n in range(1, 6):
        ts = T0 + n * 30_000
        feeds.append(impression(f"r{n}", ts))
        clicks.append(click("b" if n % 2 else "a", ts + 500, f"r{n}"))
    later: list[Event] = [impression("r9", T0 + 900_000), click("a", T0 + 900_500, "r9")]
    live, restarted = Stream(), Stream()
    live.apply(warm)
    live.apply([e for pair in zip(feeds, clicks, strict=True) for e in pair])
    live.apply(later)
    restarted.apply(warm)
    restarted.apply(list(feeds))  # the impressions backlog first
    restarted.apply(list(clicks))
    restarted.apply(later)
    assert restarted.posteriors() == live.posteriors()
    assert live.posteriors()["fresh"][1] == 3.0  # r1, r3 and r5 were clicked on b
