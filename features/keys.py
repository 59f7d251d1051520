"""Every Redis key streamrec uses, in one place.

Keys are ``{namespace}:<kind>:<id>``: the *logical* names every writer and reader uses. On
one Redis they are also the stored names, so the whole namespace shares one hash tag. With
``redis_shards`` above 1 (a Redis Cluster), :mod:`features.sharding` stores each key under
the hash tag of a shard instead, by the rule of its kind below: per-user, per-item,
per-request and per-partition state goes to the shard of its id, the sorted sets over all
items are split into one set per shard by member, and the rest (checkpoint, landmarks, the
bandit, the ranker) stays under the namespace's own tag.
"""

from __future__ import annotations

#: Scope of the counters kept over all items.
GLOBAL = "global"

#: Kinds whose key names one user, item, request or partition: stored in the shard of the id.
ENTITY_KINDS = frozenset(
    {"seen", "neg", "sess", "user", "imp", "imp-pend", "imp-rec", "imp-due"}
    | {"item", "emb", "covis", "eids"}
)
#: Kinds of sorted sets over all items: split into one set per shard, by member (item id).
SPLIT_KINDS = frozenset({"trend", "pop", "items"})


def kind_and_id(key: str) -> tuple[str, str, str]:
    """A key's hash tag, kind and id (what follows the kind; empty for a bare kind).

    Examples:
        >>> kind_and_id("{sr}:seen:u:1"), kind_and_id("{sr}:workers")
        (('{sr}', 'seen', 'u:1'), ('{sr}', 'workers', ''))
    """
    tag, _, rest = key.partition(":")
    kind, _, ident = rest.partition(":")
    return tag, kind, ident


class Keys:
    """Key builder for one namespace.

    Examples:
        >>> keys = Keys("sr")
        >>> keys.trending(3600.0)
        '{sr}:trend:3600:global'
        >>> keys.trending(86400.0, keys.category_scope("news"))
        '{sr}:trend:86400:cat:news'
        >>> keys.seen("u1")
        '{sr}:seen:u1'
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._prefix = "{" + namespace + "}"

    @property
    def prefix(self) -> str:
        """What every key of the namespace starts with."""
        return self._prefix + ":"

    @staticmethod
    def category_scope(category: str) -> str:
        """The trending scope of one category."""
        return f"cat:{category}"

    def trending(self, half_life_s: float, scope: str = GLOBAL) -> str:
        """Sorted set of forward-decayed weighted counts for one half-life and scope."""
        return f"{self._prefix}:trend:{half_life_s:g}:{scope}"

    def popularity_all_time(self) -> str:
        """Sorted set of undecayed weighted counts."""
        return f"{self._prefix}:pop:all"

    def categories(self) -> str:
        """Sorted set of categories by when they were last seen (ms)."""
        return f"{self._prefix}:categories"

    def landmarks(self) -> str:
        """Hash of decay landmark (seconds) per counter family."""
        return f"{self._prefix}:landmarks"

    def item(self, item_id: str) -> str:
        """Hash of one item's catalog record."""
        return f"{self._prefix}:item:{item_id}"

    def items_by_time(self) -> str:
        """Sorted set of available items scored by created_at (ms)."""
        return f"{self._prefix}:items:fresh"

    def item_embedding(self, item_id: str) -> str:
        """float32 bytes of an item's embedding."""
        return f"{self._prefix}:emb:{item_id}"

    def covisitation(self, item_id: str) -> str:
        """Sorted set of an item's co-visited neighbours, forward-decayed, bounded."""
        return f"{self.covisitation_prefix()}{item_id}"

    def covisitation_prefix(self) -> str:
        """What every co-visitation row's key starts with."""
        return f"{self._prefix}:covis:"

    def seen(self, user_id: str) -> str:
        """Sorted set of items a user interacted with, scored by event time (ms)."""
        return f"{self._prefix}:seen:{user_id}"

    def negatives(self, user_id: str) -> str:
        """Sorted set of items a user skipped or dismissed, scored by event time (ms)."""
        return f"{self._prefix}:neg:{user_id}"

    def session_embedding(self, user_id: str) -> str:
        """Decayed short-term embedding state of a user's current session."""
        return f"{self._prefix}:sess:{user_id}"

    def user_embedding(self, user_id: str) -> str:
        """Decayed long-term embedding state of a user."""
        return f"{self._prefix}:user:{user_id}"

    def applied_offsets(self, topic: str) -> str:
        """Hash of partition → last applied offset, written with the state it covers."""
        return f"{self._prefix}:offsets:{topic}"

    def watermarks(self, topic: str) -> str:
        """Hash of partition → highest event time (ms) applied, for the lateness rule."""
        return f"{self._prefix}:watermarks:{topic}"

    def event_ids(self, topic: str, partition: int, bucket: int) -> str:
        """Sorted set of one bucket (by id hash) of the event ids a partition applied
        recently, scored by event time (ms): a re-sent event is recognised by its id."""
        return f"{self._prefix}:eids:{topic}:{partition}:{bucket}"

    def bandit(self, segment: str) -> str:
        """Sorted set of one context segment's forward-decayed impressions and rewards per
        source (members ``<source>|n`` and ``<source>|r``)."""
        return f"{self._prefix}:bandit:{segment}"

    def bandit_segments(self) -> str:
        """Sorted set of bandit segments by when they were last updated (ms)."""
        return f"{self._prefix}:bandit-segments"

    def ranker(self) -> str:
        """Hash of ranker part → JSON weights; servers combine the parts."""
        return f"{self._prefix}:ranker"

    def impressions(self, user_id: str) -> str:
        """Sorted set of a user's open (not yet finalised) request ids by serve time (ms)."""
        return f"{self._prefix}:imp:{user_id}"

    def impression(self, request_id: str) -> str:
        """msgpack bytes of one open impression and which of its slots were clicked."""
        return f"{self._prefix}:imp-rec:{request_id}"

    def pending_clicks(self, user_id: str) -> str:
        """Sorted set of a user's clicks that arrived before the feed they came from
        (``attribution.pending_member`` members, scored by event time), waiting for its
        impression."""
        return f"{self._prefix}:imp-pend:{user_id}"

    def impressions_due(self, partition: int) -> str:
        """Sorted set of request ids by when their attribution window closes (ms), per
        partition of the impressions topic."""
        return f"{self._prefix}:imp-due:{partition}"

    def replica_probe(self, process: str) -> str:
        """A serving process's replication-lag probe (written on the primary, expiring)."""
        return f"{self._prefix}:replica-probe:{process}"

    def workers(self) -> str:
        """Hash of worker id → JSON heartbeat, read by /health."""
        return f"{self._prefix}:workers"
