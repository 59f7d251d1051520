"""The sharded commit on Redis: a batch that writes several slots, exactly once per slot.

A slot is one shard's hash tag (:mod:`features.sharding`); one script cannot span two, so a
batch is committed in four steps, always in this order (the checkpoint order):

1. **prepare**: each shard's share of the writes is stored in that shard (a list under a
   fresh batch id, expiring after :data:`PREPARED_TTL_S`). Nothing is applied yet: a crash
   here leaves only garbage, and the stream replays the batch from the unchanged checkpoint.
2. **decide**: one script in the home slot checks the guards (the checkpoint and the decay
   landmarks), applies the home writes (the checkpoint among them) and records the batch as
   pending. From here on the stream skips the batch: it *will* be applied.
3. **apply**: one script per shard applies its prepared share together with the shard's own
   copy of the checkpoint. A shard whose copy already holds the batch skips it.
4. **finish**: the pending record is removed; the worker then commits the Kafka offsets.

A crash between 2 and 4 leaves a pending batch, which :meth:`ShardedCommit.settle` (run
before a worker reads its checkpoint) applies to every shard that lacks it, from the
prepared shares: the writes are the ones computed the first time, not recomputed from state
that other shards may already have moved on. A landmark move (a batch that rescales a
family's scores in every shard) is decided only while no other batch is pending, and none is
decided while it is, so no shard mixes two frames.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import redis
from redis.exceptions import ResponseError

from features.errors import ConflictError, StreamrecError
from features.sharding import RoutedBatch, ShardLayout
from features.stores.redis_ops import (
    APPLY_PREPARED_LUA,
    BUSY,
    CONFLICT,
    DECIDE_LUA,
    encode_ops,
)

#: How long a prepared share waits to be applied: a decided batch is applied within moments
#: (by its worker, or by the next one to read its checkpoint); this only clears the shares of
#: batches that were never decided.
PREPARED_TTL_S = 7 * 86_400
#: Longest a landmark move waits for the other pending batches.
BUSY_WAIT_S = 30.0

_MSGPACK = msgspec.msgpack.Encoder()
_DECODE = msgspec.msgpack.Decoder()
_JSON = msgspec.json.Encoder()
_JSON_DECODE = msgspec.json.Decoder()


class ShareMissingError(StreamrecError):
    """A decided batch's share of a shard is gone (expired or deleted before it was applied)."""


class ShardedCommit:
    """The four-step commit over one Redis or Redis Cluster client."""

    def __init__(self, client: redis.Redis, call: Callable[[str, Callable[[], Any]], Any]) -> None:
        self.client, self.call = client, call
        self._decide = client.register_script(DECIDE_LUA)
        self._apply = client.register_script(APPLY_PREPARED_LUA)
        #: Batches this client is committing: settling them here would race its own
        #: commit (a pipelined worker reads its checkpoint while a commit is in flight).
        self._own: set[str] = set()

    def commit(self, routed: RoutedBatch, layout: ShardLayout) -> None:
        """Prepare, decide, apply and finish one routed batch."""
        batch_id = uuid.uuid4().hex
        self._own.add(batch_id)
        try:
            self._commit(routed, layout, batch_id)
        finally:
            self._own.discard(batch_id)

    def _commit(self, routed: RoutedBatch, layout: ShardLayout, batch_id: str) -> None:
        shares = {
            s: encode_ops(group, layout.to_stored) for s, group in sorted(routed.shards.items())
        }
        marks = [x for pair in sorted(routed.marks.items()) for x in pair]
        pipe = self.client.pipeline(transaction=False)
        for shard, (keys, argv) in shares.items():
            prepared = layout.prepared_key(shard, batch_id)
            pipe.rpush(prepared, _MSGPACK.encode(keys), *argv)
            pipe.expire(prepared, PREPARED_TTL_S)
        self.call("prepare", pipe.execute)
        # Text (JSON), so that the pending hash reads like every other hash.
        record = (b"R" if routed.rotates else b"N") + _JSON.encode([list(shares), marks])
        try:
            self._decide_when_free(routed, layout, batch_id, record)
        except ConflictError:
            self._drop(layout, batch_id, list(shares))
            raise
        marks_arg = _MSGPACK.encode(marks)
        self._apply_shares(
            layout, batch_id, {s: keys for s, (keys, _) in shares.items()}, marks_arg
        )
        self.call("finish", lambda: self.client.hdel(layout.pending_key(), batch_id))

    def _apply_shares(
        self, layout: ShardLayout, batch_id: str, keys: dict[int, list[str]], marks: bytes
    ) -> None:
        """Step 3 for every shard at once: one pipeline, which a cluster client sends to all
        nodes before it reads a reply, so the nodes apply their shares side by side."""
        pipe = self.client.pipeline(transaction=False)
        for shard, share_keys in keys.items():
            script_keys = [
                layout.prepared_key(shard, batch_id),
                layout.slot_offsets_key(shard),
                *share_keys,
            ]
            pipe.evalsha(self._apply.sha, len(script_keys), *script_keys, marks)
        replies = self.call("apply", lambda: pipe.execute(raise_on_error=False))
        for (shard, share_keys), reply in zip(keys.items(), replies, strict=True):
            if isinstance(reply, Exception):
                # NOSCRIPT (a node that restarted), or a real error: the share alone again,
                # through the script object, which loads the script and raises what is left.
                self._apply_share(layout, shard, batch_id, share_keys, marks)

    def settle(self, layout: ShardLayout) -> int:
        """Apply every pending batch to the shards that lack it; return how many there were."""
        pending: dict[bytes, bytes] = self.call(
            "settle", lambda: self.client.hgetall(layout.pending_key())
        )
        others = {i.decode(): r for i, r in pending.items() if i.decode() not in self._own}
        for batch_id, record in others.items():
            self._finish(layout, batch_id, record)
        return len(others)

    def _finish(self, layout: ShardLayout, batch_id: str, record: bytes) -> None:
        """Apply one pending batch wherever it is missing, then drop its record."""
        shards, marks = _JSON_DECODE.decode(record[1:])
        marks_arg = _MSGPACK.encode(marks)
        for shard in shards:
            keys = self._share_keys(layout.prepared_key(shard, batch_id))
            self._apply_share(layout, shard, batch_id, keys, marks_arg)
        self.call("settle", lambda: self.client.hdel(layout.pending_key(), batch_id))

    def _decide_when_free(
        self, routed: RoutedBatch, layout: ShardLayout, batch_id: str, record: bytes
    ) -> None:
        home_keys, home_argv = encode_ops(routed.home)
        keys = [layout.pending_key(), *home_keys]
        args: list[Any] = [batch_id, record, *home_argv]
        deadline = time.monotonic() + BUSY_WAIT_S
        while True:
            try:
                self.call("decide", lambda: self._decide(keys=keys, args=args))
                return
            except ResponseError as exc:
                reason = str(exc)
                if reason.startswith(CONFLICT):
                    raise ConflictError(reason) from None
                if not reason.startswith(BUSY):
                    raise
                if time.monotonic() > deadline:
                    raise ConflictError(f"{reason} for {BUSY_WAIT_S:g} s") from None
            # Whoever decided the pending batch may have died: finish it for them.
            self.settle(layout)
            time.sleep(0.01)

    def _share_keys(self, prepared: str) -> list[str]:
        """The keys a prepared share writes (none when the share is gone)."""
        head = self.call("settle", lambda: self.client.lindex(prepared, 0))
        keys: list[str] = [] if head is None else _DECODE.decode(head)
        return keys

    def _apply_share(
        self, layout: ShardLayout, shard: int, batch_id: str, keys: list[str], marks: bytes
    ) -> None:
        script_keys = [layout.prepared_key(shard, batch_id), layout.slot_offsets_key(shard), *keys]
        try:
            self.call("apply", lambda: self._apply(keys=script_keys, args=[marks]))
        except ResponseError as exc:
            if str(exc).startswith("MISSING"):
                raise ShareMissingError(str(exc)) from None
            raise

    def _drop(self, layout: ShardLayout, batch_id: str, shards: list[int]) -> None:
        """Delete the prepared shares of a batch that was not decided (they would expire)."""
        pipe = self.client.pipeline(transaction=False)
        for shard in shards:
            pipe.delete(layout.prepared_key(shard, batch_id))
        self.call("drop", pipe.execute)
