"""Session-based next-item baselines: hand-computed scores, ties, excludes, references."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import pytest

from streamrec.evaluation.baselines import MostPopular
from streamrec.evaluation.session_baselines import (
    SESSION_BASELINES,
    ItemKNN,
    SequentialRules,
    SessionKNN,
)

Baseline = SequentialRules | SessionKNN | ItemKNN


def feed(model: Baseline, events: list[tuple[str, str]]) -> None:
    for user, item in events:
        model.learn(user, item)


def random_stream(
    seed: int, n: int = 600, users: int = 15, items: int = 40
) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    # skewed item popularity, so that counts and neighbourhoods differ
    weights = [1.0 / (1 + rank) for rank in range(items)]
    names = [f"i{index:02d}" for index in range(items)]
    return [(f"u{rng.randrange(users)}", rng.choices(names, weights)[0]) for _ in range(n)]


# --- every baseline -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SESSION_BASELINES))
def test_a_user_without_history_gets_nothing(name: str) -> None:
    model = SESSION_BASELINES[name]()
    assert model.top("nobody", 10, exclude=set()) == []
    feed(model, [("u", "a"), ("u", "b"), ("v", "a")])
    assert model.top("nobody", 10, exclude=set()) == []


@pytest.mark.parametrize("name", sorted(SESSION_BASELINES))
def test_excluded_items_never_come_back_and_k_bounds_the_list(name: str) -> None:
    model = SESSION_BASELINES[name]()
    seen: dict[str, set[str]] = defaultdict(set)
    answered = 0
    for user, item in random_stream(seed=3):
        top = model.top(user, 5, exclude=seen[user])
        assert len(top) <= 5 and len(set(top)) == len(top)
        assert not set(top) & seen[user]
        assert model.top(user, 0, exclude=seen[user]) == []
        answered += bool(top)
        model.learn(user, item)
        seen[user].add(item)
    assert answered > 400


@pytest.mark.parametrize("name", sorted(SESSION_BASELINES))
def test_two_runs_of_the_same_stream_answer_the_same(name: str) -> None:
    first, second = SESSION_BASELINES[name](), SESSION_BASELINES[name]()
    stream = random_stream(seed=11)
    answers = []
    for model in (first, second):
        tops = []
        for user, item in stream:
            tops.append(model.top(user, 10, exclude={item}))
            model.learn(user, item)
        answers.append(tops)
    assert answers[0] == answers[1]


def test_the_registry_names_the_three_baselines() -> None:
    assert SESSION_BASELINES == {
        "sequential_rules": SequentialRules,
        "vsknn": SessionKNN,
        "item_knn_cosine": ItemKNN,
    }


# --- sequential rules -----------------------------------------------------------------


def test_rules_weigh_one_over_the_distance_within_the_steps() -> None:
    sr = SequentialRules(steps=3)
    feed(sr, [("u", item) for item in "abcde"])
    assert sr.rules["a"] == pytest.approx({"b": 1.0, "c": 1 / 2, "d": 1 / 3})  # e is 4 away
    assert sr.rules["c"] == pytest.approx({"d": 1.0, "e": 1 / 2})


def test_rules_add_up_over_users_and_skip_an_item_following_itself() -> None:
    sr = SequentialRules()
    feed(sr, [("u", "a"), ("u", "a"), ("u", "b"), ("v", "a"), ("v", "c"), ("v", "b")])
    assert sr.rules["a"] == pytest.approx({"b": 1.0 + 1 / 2 + 1 / 2, "c": 1.0})


def test_sr_recommends_from_the_last_item_only_with_ties_by_id() -> None:
    sr = SequentialRules()
    feed(sr, [("u", "a"), ("u", "z"), ("v", "a"), ("v", "m"), ("w", "q"), ("w", "x")])
    feed(sr, [("me", "q"), ("me", "a")])  # q's rule to x must not count
    assert sr.top("me", 5, exclude=set()) == ["m", "z"]


def test_sr_option_adds_earlier_items_with_weight_one_over_age() -> None:
    sr = SequentialRules(last=2)
    feed(sr, [("u", "a"), ("u", "x"), ("v", "b"), ("v", "y"), ("v", "y2")])
    feed(sr, [("me", "a"), ("me", "b")])
    # b: y 1, y2 1/2; a (age 2): x 1/2 -> tie of x and y2 broken by id
    assert sr.top("me", 5, exclude={"a", "b"}) == ["y", "x", "y2"]


# --- V-SKNN ---------------------------------------------------------------------------


def test_vsknn_weighs_recent_session_items_more_and_normalises_by_length() -> None:
    knn = SessionKNN(session_length=2)
    feed(knn, [("u", "c"), ("u", "zz")])  # shares c (weight 1): 1 / sqrt(2 * 2) = 0.5
    feed(knn, [("v", "a"), ("v", "m")])  # shares a (weight 1/2): 0.5 / sqrt(2 * 2) = 0.25
    longer = ["c", "m"] + [f"f{n}" for n in range(6)]  # shares c: 1 / sqrt(2 * 8) = 0.25
    feed(knn, [("w", item) for item in longer])
    feed(knn, [("me", "old"), ("me", "a"), ("me", "c")])  # session [a, c]: "old" is out
    # m = 0.25 + 0.25 ties zz = 0.5 (ids decide), then the f's at 0.25
    assert knn.top("me", 4, exclude={"a", "c", "old"}) == ["m", "zz", "f0", "f1"]


def test_vsknn_keeps_the_most_similar_neighbours_and_not_oneself() -> None:
    knn = SessionKNN(session_length=2, k_neighbours=1)
    feed(knn, [("u", "a"), ("u", "x"), ("v", "c"), ("v", "y")])
    feed(knn, [("me", "a"), ("me", "c")])
    assert knn.top("me", 5, exclude=set()) == ["c", "y"]  # v only; its c scores too
    alone = SessionKNN()
    feed(alone, [("me", "a"), ("me", "b")])
    assert alone.top("me", 5, exclude=set()) == []


def test_vsknn_samples_the_most_recently_active_candidates() -> None:
    knn = SessionKNN(sample_size=1)
    feed(knn, [("u", "a"), ("u", "x"), ("v", "a"), ("v", "y"), ("me", "a")])
    assert knn.top("me", 5, exclude={"a"}) == ["y"]
    knn.learn("u", "x2")  # u is now the most recent
    assert knn.top("me", 5, exclude={"a"}) == ["x", "x2"]


def test_vsknn_neighbour_windows_keep_only_their_latest_items() -> None:
    knn = SessionKNN(session_length=1, neighbour_length=2)
    feed(knn, [("u", "a"), ("u", "b"), ("u", "c"), ("me", "a")])  # a left u's window
    assert knn.top("me", 5, exclude=set()) == []


def reference_vsknn(
    stream: list[tuple[str, str]], user: str, length: int, window: int, sample: int
) -> dict[str, float]:
    """Plain-Python V-SKNN without the neighbour cut, from the published description."""
    recent: dict[str, list[str]] = defaultdict(list)
    active: dict[str, int] = {}
    for clock, (who, item) in enumerate(stream):
        if item in recent[who]:
            recent[who].remove(item)
        recent[who] = (recent[who] + [item])[-window:]
        active[who] = clock
    session = recent[user][-length:]
    weight = {item: (pos + 1) / len(session) for pos, item in enumerate(session)}
    overlap = {
        other: sum(weight.get(item, 0.0) for item in items)
        for other, items in recent.items()
        if other != user
    }
    candidates = sorted((o for o, s in overlap.items() if s > 0), key=lambda o: -active[o])
    scores: dict[str, float] = defaultdict(float)
    for other in candidates[:sample]:
        similarity = overlap[other] / math.sqrt(len(session) * len(recent[other]))
        for item in recent[other]:
            scores[item] += similarity
    return scores


@pytest.mark.parametrize("seed", [1, 2])
def test_vsknn_agrees_with_a_plain_python_reference(seed: int) -> None:
    stream = random_stream(seed, n=400, users=30)
    knn = SessionKNN(session_length=5, neighbour_length=8, sample_size=10, k_neighbours=1000)
    for position, (user, item) in enumerate(stream):
        if position % 7 == 0 and user in knn.users.ids:
            exclude = {item}
            reference = reference_vsknn(stream[:position], user, 5, 8, 10)
            best = sorted((s for i, s in reference.items() if i not in exclude), reverse=True)
            got = knn.top(user, 5, exclude)
            assert [reference[i] for i in got] == pytest.approx(best[:5])
        knn.learn(user, item)


# --- item kNN -------------------------------------------------------------------------


def test_item_knn_cosine_counts_distinct_users() -> None:
    knn = ItemKNN()
    feed(knn, [("u", "a"), ("u", "b"), ("u", "c"), ("v", "a"), ("v", "b"), ("v", "a")])
    feed(knn, [("w", "b"), ("w", "d")])
    # n_a = 2, n_b = 3, n_c = n_d = 1; co(a,b) = 2, co(a,c) = 1, co(b,d) = 1, co(a,d) = 0
    assert knn.similarity("a", "b") == pytest.approx(2 / math.sqrt(6))
    assert knn.similarity("b", "a") == knn.similarity("a", "b")
    assert knn.similarity("a", "c") == pytest.approx(1 / math.sqrt(2))
    assert knn.similarity("b", "d") == pytest.approx(1 / math.sqrt(3))
    assert knn.similarity("a", "d") == 0.0 and knn.similarity("a", "new") == 0.0


def test_item_knn_sums_similarity_over_the_last_history_items() -> None:
    stream = [("u", "a"), ("u", "b"), ("u", "c"), ("v", "a"), ("v", "b"), ("w", "b")]
    stream += [("w", "d"), ("me", "a"), ("me", "d")]
    last_only, both = ItemKNN(history=1), ItemKNN(history=2)
    feed(last_only, stream)
    feed(both, stream)
    assert last_only.top("me", 5, exclude={"a", "d"}) == ["b"]  # a is past the history
    # n_a = n_b = 3, n_c = 1, n_d = 2; b: 2/sqrt(9) + 1/sqrt(6) = 1.07, c: 1/sqrt(3) = 0.58
    assert both.top("me", 5, exclude={"a", "d"}) == ["b", "c"]


def test_item_knn_window_pairs_only_recent_earlier_items() -> None:
    knn = ItemKNN(window=1)
    feed(knn, [("u", "a"), ("u", "b"), ("u", "c")])
    assert knn.similarity("a", "c") == 0.0
    assert knn.similarity("b", "c") == pytest.approx(1.0)


def test_item_knn_breaks_ties_by_id_and_grows_past_its_first_capacity() -> None:
    knn = ItemKNN()
    feed(knn, [("u", f"x{n:03d}") for n in range(100)] + [("me", "x050")])
    assert knn.top("me", 3, exclude={"x050"}) == ["x000", "x001", "x002"]


@pytest.mark.parametrize("seed", [4, 5])
def test_item_knn_agrees_with_cosine_from_sets(seed: int) -> None:
    stream = random_stream(seed)
    knn = ItemKNN(history=3)
    users_of: dict[str, set[str]] = defaultdict(set)
    order: dict[str, list[str]] = defaultdict(list)
    for user, item in stream:
        knn.learn(user, item)
        users_of[item].add(user)
        if item not in order[user]:
            order[user].append(item)
    for user, items in order.items():
        recent = items[-3:]
        reference = {
            j: sum(
                len(users_of[i] & users_of[j]) / math.sqrt(len(users_of[i]) * len(users_of[j]))
                for i in recent
            )
            for j in users_of
            if j not in items
        }
        best = sorted((s for s in reference.values() if s > 0), reverse=True)
        got = knn.top(user, 10, exclude=set(items))
        assert [reference[j] for j in got] == pytest.approx(best[:10])


# --- most popular (bucketed) ----------------------------------------------------------


def test_most_popular_matches_a_full_sort_at_every_step() -> None:
    pop = MostPopular()
    exclude = {"i03", "i10"}
    for _, item in random_stream(seed=7, n=500):
        pop.learn("u", item)
        ranked = sorted(pop.counts.items(), key=lambda pair: (-pair[1], pair[0]))
        expected = [i for i, _ in ranked if i not in exclude][:8]
        assert pop.top("u", 8, exclude) == expected
    assert pop.top("u", 0, set()) == []
    assert len(pop.top("u", 100, set())) == len(pop.counts)
