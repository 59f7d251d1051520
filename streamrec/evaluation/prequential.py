"""Prequential (test-then-learn) evaluation of the whole funnel on a recorded stream.

Events go through the very processors the worker runs (an embedded worker on an in-process
bus and the in-memory store) and requests through the very funnel and feed service the API
runs, with the ANN replica fed synchronously. In event-time order, before each target
interaction is applied, the user's top-K is asked for at that event's time and the target
item's rank recorded; then the event is applied. The funnel's own impressions go back
through the bus, so a target found in a served feed is attributed to the source that placed
it, and the bandit and the ranker learn as they would live.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from features.keys import Keys
from features.stores.memory_store import InMemoryStore
from serving.feed import FeedService
from serving.funnel.context import FeedRequest
from serving.funnel.funnel import Funnel
from serving.funnel.settings import FunnelSettings
from serving.metrics import FeedMetrics
from serving.resources import Resources
from streamrec.evaluation.ablation import Variant, ablation_variants
from streamrec.evaluation.baselines import ItemCovisitation, MostPopular
from streamrec.evaluation.metrics import ExposureAccumulator, RankAccumulator, rank_of
from streamrec.evaluation.session_baselines import SESSION_BASELINES
from streamrec.settings import Settings
from streamrec.wiring import build_worker, sharded, validator
from streams.io.bus import InProcessBus
from streams.io.replica import IndexReplica
from streams.io.transport import RawMessage
from streams.schema import Event, Interaction, Item, encode, event_key
from streams.worker.embedding_refresh import EmbeddingRefresher

#: Interactions that are targets by default: everything but skips and dismissals, which say
#: what the user did not want.
DEFAULT_TARGETS = frozenset({"view", "click", "like", "share", "add_to_cart", "purchase"})
#: Most events applied in one batch between asked targets.
MAX_PENDING = 1000
STAGES = ("user_state", "retrieval", "filtering", "scoring", "ordering")


@dataclass(frozen=True)
class EvalOptions:
    """How a prequential run asks and counts."""

    cutoffs: tuple[int, ...] = (10, 20)
    exclude_seen: bool = True
    seed: int = 0
    limit: int | None = None  # events read at most
    warmup: int = 0  # first events only learned from
    targets: frozenset[str] = DEFAULT_TARGETS
    learn_ordering: bool = True  # log the funnel's impressions back into the stream
    series_every: int = 500  # evaluated events per point of the time series
    # Ask for every N-th target only (1: every target). Events between two asked targets
    # are applied in one batch, so each asked target still sees exactly the state the exact
    # mode would show it; fewer feeds are served, so the bandit and ranker see fewer
    # impressions.
    sample_every: int = 1
    ablate: bool = False  # also each source alone, and the funnel without bandit / ranker


class Baseline(Protocol):
    """A simple recommender scored beside the funnel under the same protocol."""

    name: str

    def learn(self, user: str, item: str) -> None:
        """Learn one positive interaction (after it was evaluated)."""

    def top(self, user: str, k: int, exclude: Collection[str]) -> list[str]:
        """Up to ``k`` items for ``user``, none of ``exclude``."""
        ...


class _NoSink:
    """Impressions go nowhere (``learn_ordering`` off)."""

    def send(self, event: Event) -> None:
        """Drop the event."""

    def flush(self, timeout_s: float = 10.0) -> int:
        """Nothing is queued."""
        return 0


@dataclass
class _Window:
    """One point of the time series."""

    hits: Counter[str] = field(default_factory=Counter)
    count: int = 0
    slots: Counter[str] = field(default_factory=Counter)


def replay_funnel_settings(funnel: FunnelSettings, options: EvalOptions) -> FunnelSettings:
    """The funnel as a replay runs it: the run's seed and repeat policy, and no time budgets
    (a source cut off on a busy machine would change the numbers, and a replay's numbers must
    depend on the stream and the seed only)."""
    unbounded = {
        name: source.model_copy(update={"budget_ms": 10_000.0})
        for name, source in funnel.sources.items()
    }
    return funnel.model_copy(
        update={"exclude_seen": options.exclude_seen, "seed": options.seed, "sources": unbounded}
    )


class PrequentialRun:
    """One test-then-learn pass over a stream."""

    def __init__(self, settings: Settings, options: EvalOptions) -> None:
        self.options = options
        funnel_settings = replay_funnel_settings(settings.funnel, options)
        self._now_s = 0.0  # event time: the live reader's caches age by it, as they would live
        self.settings = settings.model_copy(update={"funnel": funnel_settings})
        self.bus = InProcessBus(partitions=1, topics=settings.topics)
        # In as many shards as the settings say: a sharded layout must not change a feed.
        self.store = sharded(InMemoryStore(), settings)
        self.worker = build_worker(
            self.settings,
            self.bus.source(settings.topics.worker_inputs, "evaluate"),
            self.store,
            self.bus,
            worker_id="evaluate",
        )
        # Item vectors learned from co-visitation, as `streamrec embeddings follow` publishes
        # them live: an id-only stream's items get embeddings, and the ANN sources something.
        self.refresher = EmbeddingRefresher(
            self.store,
            Keys(settings.namespace),
            settings.features,
            settings.learning,
            seed=options.seed,
        )
        self.replica = IndexReplica(
            topic=settings.topics.items,
            dim=settings.features.embedding_dim,
            source_factory=lambda start: self.bus.tail_source(settings.topics.items, start),
            validator=validator(settings),
        )
        resources = Resources(
            store=self.store,
            sink=self.bus,
            keys=Keys(settings.namespace),
            features=settings.features,
            validator=validator(settings),
            transport_probe=lambda: (True, "in-process bus"),
            replica=self.replica,
            learning=settings.learning,
            funnel=funnel_settings,
            clock=lambda: self._now_s,
        )
        self.funnel = Funnel(resources.live, funnel_settings, settings.learning, concurrent=False)
        sink = self.bus if options.learn_ordering else _NoSink()
        self.service = FeedService(self.funnel, sink, FeedMetrics())
        # Ablations read the same live state but log nothing: only the funnel teaches.
        self.variants: list[Variant] = (
            ablation_variants(resources.live, funnel_settings, settings.learning)
            if options.ablate
            else []
        )
        self.popular = MostPopular()
        self.baselines: list[Baseline] = [
            self.popular,
            ItemCovisitation(window=settings.features.covisitation_window),
            *(cls() for cls in SESSION_BASELINES.values()),
        ]
        self.seen: dict[str, set[str]] = defaultdict(set)
        self._pending: list[Event] = []
        self.k = max(options.cutoffs)
        systems = ["funnel", *(b.name for b in self.baselines), *(v.name for v in self.variants)]
        self.ranks = {name: RankAccumulator(options.cutoffs) for name in systems}
        self.warm = {name: RankAccumulator(options.cutoffs) for name in systems}
        self.exposure = ExposureAccumulator()
        self.source_found: Counter[str] = Counter()
        self.removed: Counter[str] = Counter()
        self.stage_ms: dict[str, list[float]] = defaultdict(list)
        self.catalog: set[str] = set()
        # Event time from an item's first interaction to its first learned vector.
        self.first_seen_s: dict[str, float] = {}
        self.embedded_after_s: dict[str, float] = {}
        self.series: list[_Window] = [_Window()]
        self.events = self.evaluated = self.warm_evaluated = 0
        self._offset = 0

    def run(self, events: Iterable[Event]) -> dict[str, Any]:
        """Evaluate then apply every event; return the report."""
        started = time.perf_counter()
        every = max(self.options.sample_every, 1)
        targets = 0
        for event in events:
            if self.options.limit is not None and self.events >= self.options.limit:
                break
            self.events += 1
            self._now_s = max(self._now_s, event.ts / 1000.0)
            if isinstance(event, Item):
                self.catalog.add(event.item_id)
                self.replica.apply([self._raw(event)])
            elif isinstance(event, Interaction):
                self.catalog.add(event.item_id)
                self.first_seen_s.setdefault(event.item_id, event.ts / 1000.0)
                learned = self.events > self.options.warmup
                if learned and event.type in self.options.targets:
                    targets += 1
                    if (targets - 1) % every == 0:
                        self._flush()
                        self._evaluate(event)
            self._pending.append(event)
            if every == 1 or len(self._pending) >= MAX_PENDING:
                self._flush()
        self._flush()
        elapsed = time.perf_counter() - started
        return self._report(elapsed)

    def _flush(self) -> None:
        """Apply the pending events: the baselines learn them, the worker applies them."""
        for event in self._pending:
            if isinstance(event, Interaction):
                if event.type in self.options.targets:
                    for baseline in self.baselines:
                        baseline.learn(event.user_id, event.item_id)
                self.seen[event.user_id].add(event.item_id)
            self.bus.send(event)
        if self._pending:
            self._apply()
            upserts = self.refresher.maybe_refresh(int(self._now_s * 1000), self.events)
            for item in upserts:
                if item.item_id not in self.embedded_after_s:
                    first = self.first_seen_s.get(item.item_id, self._now_s)
                    self.embedded_after_s[item.item_id] = self._now_s - first
                self.bus.send(item)
                self.replica.apply([self._raw(item)])
            if upserts:
                self._apply()
        self._pending.clear()

    def _apply(self) -> None:
        # Poll only what is there: an empty poll waits out the batch timeout.
        while any(self.worker.source.lag().values()):
            self.worker.run_once()

    def _evaluate(self, event: Interaction) -> None:
        user, target = event.user_id, event.item_id
        warm = bool(self.seen.get(user))
        exclude = self.seen[user] if self.options.exclude_seen else set()
        request = FeedRequest(
            user_id=user,
            k=self.k,
            now_s=event.ts / 1000.0,
            request_id=f"eval-{self.options.seed}-{self.events}",
            device=str(event.context.get("device")) if "device" in event.context else None,
        )
        result = self.service.feed(request)
        ranked = [slot.candidate.item_id for slot in result.slots]
        answers = {"funnel": ranked}
        for baseline in self.baselines:
            answers[baseline.name] = baseline.top(user, self.k, exclude)
        for variant in self.variants:
            answers[variant.name] = variant.items(request)
        window = self.series[-1]
        for name, items in answers.items():
            rank = rank_of(target, items)
            self.ranks[name].add(rank)
            if warm:
                self.warm[name].add(rank)
            if rank is not None and rank <= min(self.options.cutoffs):
                window.hits[name] += 1
        window.count += 1
        window.slots.update(slot.source for slot in result.slots)
        for source, items in result.retrieved.items():
            if target in items:
                self.source_found[source] += 1
        self.removed.update(result.trace.removed)
        for stage, ms in result.trace.stages_ms.items():
            self.stage_ms[stage].append(ms)
        self.exposure.add(ranked, self.popular.counts, sum(self.popular.counts.values()))
        self.evaluated += 1
        self.warm_evaluated += warm
        if window.count >= self.options.series_every:
            self.series.append(_Window())

    def _raw(self, item: Item) -> RawMessage:
        self._offset += 1
        return RawMessage(
            self.settings.topics.items, 0, self._offset, event_key(item), encode(item)
        )

    def _report(self, elapsed_s: float) -> dict[str, Any]:
        n = max(self.evaluated, 1)
        cut = min(self.options.cutoffs)
        metrics = {
            name: {"all": acc.summary(), "warm": self.warm[name].summary()}
            for name, acc in self.ranks.items()
        }
        stages: dict[str, dict[str, float]] = {}
        for stage, values in self.stage_ms.items():
            ordered = sorted(values)
            stages[stage] = {
                "mean": sum(ordered) / len(ordered),
                "p50": ordered[len(ordered) // 2],
                "p99": ordered[min(len(ordered) - 1, (len(ordered) * 99) // 100)],
            }
        series = [w for w in self.series if w.count]
        return {
            "events": self.events,
            # Events the embedded worker set aside (bad input, or state it cannot represent):
            # a valid stream gives 0.
            "dead_lettered": self.worker.stats.dead_lettered,
            "evaluated": self.evaluated,
            "warm_evaluated": self.warm_evaluated,
            "warmup": self.options.warmup,
            "exclude_seen": self.options.exclude_seen,
            "seed": self.options.seed,
            "sample_every": self.options.sample_every,
            f"hr_at_{cut}": metrics["funnel"]["all"][f"hr@{cut}"],
            **baseline_figures(metrics, [b.name for b in self.baselines], cut),
            **(
                {"ablation": {v.name: metrics[v.name]["all"] for v in self.variants}}
                if self.variants
                else {}
            ),
            "metrics": metrics,
            "source_recall": {s: c / n for s, c in sorted(self.source_found.items())},
            "learned_embeddings": embedding_latency(
                list(self.embedded_after_s.values()), len(self.first_seen_s)
            ),
            "filters_removed": dict(sorted(self.removed.items())),
            **self.exposure.summary(len(self.catalog)),
            "series": {
                "evaluated": [w.count for w in series],
                "hr": {name: [w.hits[name] / w.count for w in series] for name in self.ranks},
                "source_shares": _shares(series),
            },
            "timing": {
                "seconds": elapsed_s,
                "events_per_s": self.events / elapsed_s if elapsed_s else 0.0,
                "stage_ms": stages,
            },
            "events_per_s": self.events / elapsed_s if elapsed_s else 0.0,
        }


#: Short names of the baselines on the report's JSON line (``baseline_<name>_hr_at_10``).
BASELINE_KEYS = {
    MostPopular.name: "pop",
    ItemCovisitation.name: "covis",
    "sequential_rules": "sr",
    "vsknn": "vsknn",
    "item_knn_cosine": "item_knn",
}


def baseline_figures(
    metrics: dict[str, dict[str, dict[str, float]]], names: list[str], cut: int
) -> dict[str, Any]:
    """Every baseline's HR and NDCG at ``cut``, and the best baseline by HR."""
    out: dict[str, Any] = {}
    for name in names:
        key = BASELINE_KEYS.get(name, name)
        out[f"baseline_{key}_hr_at_{cut}"] = metrics[name]["all"][f"hr@{cut}"]
        out[f"baseline_{key}_ndcg_at_{cut}"] = metrics[name]["all"][f"ndcg@{cut}"]
    best = max(names, key=lambda n: (metrics[n]["all"][f"hr@{cut}"], n))
    out["best_baseline"] = best
    out[f"hr_at_{cut}_best_baseline"] = metrics[best]["all"][f"hr@{cut}"]
    out[f"ndcg_at_{cut}_best_baseline"] = metrics[best]["all"][f"ndcg@{cut}"]
    out[f"ndcg_at_{cut}"] = metrics["funnel"]["all"][f"ndcg@{cut}"]
    # The bar: the funnel against the co-visitation counter it must clearly beat.
    covis = out.get(f"baseline_covis_hr_at_{cut}")
    if covis:
        out[f"hr_at_{cut}_ratio_to_covis"] = metrics["funnel"]["all"][f"hr@{cut}"] / covis
    return out


def embedding_latency(latencies_s: list[float], items: int) -> dict[str, float]:
    """How many of the ``items`` seen got a learned vector, and how long after their first
    interaction (event-time seconds: median and 90th percentile).

    Examples:
        >>> embedding_latency([10.0, 20.0, 30.0, 600.0], items=8)
        {'items_embedded': 4, 'share_embedded': 0.5, 'latency_s_p50': 30.0, 'latency_s_p90': 600.0}
    """
    ordered = sorted(latencies_s)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    return {
        "items_embedded": len(ordered),
        "share_embedded": len(ordered) / items if items else 0.0,
        "latency_s_p50": quantile(0.5),
        "latency_s_p90": quantile(0.9),
    }


def _shares(series: list[_Window]) -> dict[str, list[float]]:
    """Each source's share of the served slots, per time-series point."""
    sources = sorted({s for w in series for s in w.slots})
    out: dict[str, list[float]] = {s: [] for s in sources}
    for window in series:
        total = sum(window.slots.values()) or 1
        for source in sources:
            out[source].append(window.slots[source] / total)
    return out
