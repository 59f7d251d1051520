"""`streamrec verify`'s comparison: per family, lost and doubled told apart, trimming excused."""

from __future__ import annotations

from streams.data.verify import diff_states, live_order
from streams.io.transport import RawMessage

P = "{sr}:"


def test_equal_states_differ_nowhere_within_float_rounding() -> None:
    truth = {f"{P}pop:all": {"a": 3.0, "b": 1.0}, f"{P}item:a": {"category": "x"}}
    live = {f"{P}pop:all": {"a": 3.0 + 1e-12, "b": 1.0}, f"{P}item:a": {"category": "x"}}
    totals = diff_states(truth, live, P, covis_bound=50).totals()
    assert totals == {
        "families": 2,
        "keys_compared": 2,
        "keys_different": 0,
        "lost": 0,
        "doubled": 0,
        "trimmed": 0,
    }


def test_less_is_lost_and_more_is_doubled_per_family() -> None:
    truth = {
        f"{P}trend:3600:cat:news": {"a": 2.0},
        f"{P}trend:3600:global": {"a": 2.0},
        f"{P}seen:u1": {"a": 1.0},
    }
    live = {
        f"{P}trend:3600:cat:news": {"a": 1.5},  # an event lost its category
        f"{P}trend:3600:global": {"a": 3.0},  # an event counted twice
        f"{P}seen:u2": {"a": 1.0},  # u1's key gone, u2's extra
    }
    diff = diff_states(truth, live, P, covis_bound=50)
    fams = diff.families
    assert (fams["trend:cat"].lost, fams["trend:cat"].doubled) == (1, 0)
    assert (fams["trend:global"].lost, fams["trend:global"].doubled) == (0, 1)
    assert (fams["seen"].keys_different, fams["seen"].lost, fams["seen"].doubled) == (2, 1, 1)
    assert diff.totals()["keys_different"] == 4


def test_embedding_states_compare_by_count_and_value() -> None:
    state = {"last_ts_ms": 5, "count": 3, "mass": 1.5, "total": [0.1, 0.2]}
    fewer = state | {"count": 2}
    diff = diff_states({f"{P}sess:u": state}, {f"{P}sess:u": fewer}, P, covis_bound=50)
    assert diff.families["sess"].lost == 1
    same = state | {"total": [0.1 + 1e-9, 0.2]}
    assert diff_states({f"{P}sess:u": state}, {f"{P}sess:u": same}, P, 50).totals()["lost"] == 0


def test_a_covisitation_row_at_its_bound_is_trimmed_not_different() -> None:
    full = {f"i{n}": float(n + 1) for n in range(3)}
    other = {"i0": 1.0, "i1": 2.0, "i9": 0.5}
    diff = diff_states({f"{P}covis:a": full}, {f"{P}covis:a": other}, P, covis_bound=3)
    assert diff.totals()["trimmed"] == 1 and diff.totals()["keys_different"] == 0
    short = diff_states({f"{P}covis:a": {"i0": 1.0}}, {f"{P}covis:a": {"i0": 2.0}}, P, 3)
    assert short.totals()["doubled"] == 1


def test_live_order_puts_the_catalog_first_and_keeps_each_partition_in_order() -> None:
    def msg(topic: str, partition: int, offset: int, ts: int) -> RawMessage:
        return RawMessage(topic, partition, offset, None, None, ts)

    # Partition 0's clocks went backwards: its order still wins over record time.
    messages = [msg("c", 0, 1, 1), msg("c", 0, 0, 9), msg("c", 1, 0, 5), msg("items", 0, 0, 99)]
    order = [(m.topic, m.partition, m.offset) for m in live_order(messages, "items")]
    assert order == [("items", 0, 0), ("c", 1, 0), ("c", 0, 0), ("c", 0, 1)]
