"""The position-based click model: position bias, relevance, seeds, and regret."""

from __future__ import annotations

import numpy as np
import pytest

from streams.data.click_model import ClickModelConfig, PositionBasedModel, best_expected_clicks
from streams.data.simulator import SimulatorConfig, StreamSimulator
from streams.schema import EventValidator, Interaction, encode

SLATE = [f"i{k}" for k in range(10)]


def constant(value: float) -> PositionBasedModel:
    return PositionBasedModel(lambda user, item: value, seed=1)


def click_rates(model: PositionBasedModel, slate: list[str], rounds: int) -> np.ndarray:
    counts = np.zeros(len(slate))
    for _ in range(rounds):
        clicked, _ = model.clicks("u1", slate)
        counts[clicked] += 1
    return counts / rounds


def test_top_positions_are_clicked_more_at_equal_relevance() -> None:
    model = constant(0.8)
    rates = click_rates(model, SLATE, 4_000)
    assert rates[0] > rates[2] > rates[5] > rates[9] > 0
    # And as the model says: examination (1 + k)^-1 times attractiveness 0.8 · 0.8.
    expected = 0.64 / (1.0 + np.arange(10))
    assert np.allclose(rates, expected, atol=0.03)


def test_more_relevant_items_are_clicked_more_at_the_same_position() -> None:
    relevance = {"good": 0.9, "poor": 0.1}
    model = PositionBasedModel(lambda user, item: relevance[item], seed=2)
    good = click_rates(model, ["good", "poor"], 3_000)
    bad = click_rates(model, ["poor", "good"], 3_000)
    assert good[0] > 4 * bad[0] and bad[1] > 4 * good[1]


def test_a_seed_gives_the_same_clicks_and_another_seed_others() -> None:
    def run(seed: int) -> list[Interaction]:
        model = PositionBasedModel(lambda user, item: 0.5, seed=seed)
        return [
            e
            for n in range(50)
            for e in model.respond("u1", SLATE, request_id=f"r{n}", ts_ms=1_000 * n)
        ]

    assert run(3) == run(3) != run(4)


def test_respond_sends_valid_events_that_carry_the_feed_back() -> None:
    model = constant(0.6)
    events = model.respond(
        "u7", SLATE, request_id="req-1", ts_ms=5_000, session_id="s1", context={"device": "web"}
    )
    assert events, "at relevance 0.6 someone looks at the top of ten items"
    validator = EventValidator(embedding_dim=4, max_payload_bytes=10_000, max_future_ms=0)
    for event in events:
        assert validator.decode(Interaction, encode(event), now_ms=1_000_000) == event
        assert event.request_id == "req-1" and event.session_id == "s1"
        assert event.item_id == SLATE[event.position or 0] and event.user_id == "u7"
        assert event.ts > 5_000 and event.type in {"click", "skip", "view"}
        assert (event.dwell_ms is not None) == (event.type == "click")
    assert len({e.event_id for e in events}) == len(events)
    assert [e.position for e in events] == sorted(e.position or 0 for e in events)


def test_without_views_only_clicks_and_skips_come_back() -> None:
    model = PositionBasedModel(lambda u, i: 0.3, ClickModelConfig(emit_views=False), seed=0)
    kinds = {
        e.type for n in range(100) for e in model.respond("u", SLATE, request_id=f"r{n}", ts_ms=0)
    }
    assert kinds == {"click", "skip"}


def test_regret_on_a_hand_example() -> None:
    relevance = {"a": 1.0, "b": 0.5, "c": 0.25, "d": 0.0}
    config = ClickModelConfig(eta=1.0, attractiveness_ceiling=1.0)
    model = PositionBasedModel(lambda user, item: relevance[item], config)
    # Served c, a, d: 1·0.25 + ½·1 + ⅓·0 = 0.75.
    assert model.expected_clicks("u", ["c", "a", "d"]) == pytest.approx(0.75)
    # The best three of four: a, b, c = 1 + ½·½ + ⅓·¼ = 1.3333…
    assert model.best_expected_clicks("u", ["a", "b", "c", "d"], 3) == pytest.approx(4 / 3)
    assert model.regret("u", ["c", "a", "d"], ["a", "b", "c", "d"]) == pytest.approx(4 / 3 - 0.75)
    assert model.regret("u", ["a", "b", "c"], ["a", "b", "c", "d"]) == pytest.approx(0.0)


def test_best_expected_clicks_with_fewer_candidates_than_positions() -> None:
    assert best_expected_clicks([1.0, 0.5, 0.25], [0.2, 0.6]) == pytest.approx(0.6 + 0.1)
    assert best_expected_clicks([1.0, 0.5], []) == 0.0


def test_on_the_simulators_ground_truth_an_on_taste_slate_has_less_regret() -> None:
    sim = StreamSimulator(SimulatorConfig(users=10, items=500, embedding_dim=16), seed=0)
    model = PositionBasedModel(sim.relevance, seed=0)
    candidates = sim.live_item_ids()
    relevance = sim.relevances("u1", candidates)
    by_relevance = [candidates[i] for i in np.argsort(-relevance)]
    best, worst = by_relevance[:10], by_relevance[-10:]
    assert model.regret("u1", best, candidates) == pytest.approx(0.0)
    assert model.regret("u1", worst, candidates) > 0.5
    assert model.regret("u1", best[::-1], candidates) > 0.0  # the right items, wrong order


@pytest.mark.parametrize(
    "bad",
    [
        {"eta": -1.0},
        {"attractiveness_floor": 0.9, "attractiveness_ceiling": 0.5},
        {"skip_probability": 2.0},
    ],
)
def test_config_rejects_impossible_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ClickModelConfig(**bad)  # type: ignore[arg-type]
