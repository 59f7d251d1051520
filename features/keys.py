"""Every Redis key streamrec uses, in one place.

Keys are ``{namespace}:<kind>:<id>``. Keys that must be written in one transaction share a
hash tag, so the same code runs on Redis Cluster.
"""

from __future__ import annotations


class Keys:
    """Key builder for one namespace.

    Examples:
        >>> Keys("sr").popularity(3600.0)
        '{sr}:pop:3600'
        >>> Keys("sr").seen("u1")
        '{sr}:seen:u1'
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        # One hash tag for the whole namespace: a worker's batch touches global counters, users'
        # seen-sets and the offset table together, and MULTI/EXEC on a cluster needs one slot.
        self._prefix = "{" + namespace + "}"

    def popularity(self, half_life_s: float) -> str:
        """Sorted set of forward-decayed popularity for one half-life."""
        return f"{self._prefix}:pop:{half_life_s:g}"

    def item(self, item_id: str) -> str:
        """Hash of one item's catalog record."""
        return f"{self._prefix}:item:{item_id}"

    def items_by_time(self) -> str:
        """Sorted set of available items scored by created_at (ms), newest last."""
        return f"{self._prefix}:items:fresh"

    def landmarks(self) -> str:
        """Hash of decay landmark (seconds) per counter key."""
        return f"{self._prefix}:landmarks"

    def seen(self, user_id: str) -> str:
        """Sorted set of items a user interacted with, scored by event time (ms)."""
        return f"{self._prefix}:seen:{user_id}"

    def applied_offsets(self, topic: str) -> str:
        """Hash of partition → last applied offset, written with the state it covers."""
        return f"{self._prefix}:offsets:{topic}"

    def workers(self) -> str:
        """Hash of worker id → JSON heartbeat, read by /health."""
        return f"{self._prefix}:workers"
