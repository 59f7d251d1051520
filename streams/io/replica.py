"""A serving process's own ANN replica of the item catalog, fed by the items topic.

It snapshots the index together with the offsets it covers, so a restart loads the snapshot
and replays only the tail of the (compacted) items topic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from features.ann import AnnIndex, HnswIndex
from features.catalog import ItemMeta
from features.errors import InvalidEventError
from streams.io.transport import MessageSource, RawMessage
from streams.item_vectors import item_meta, item_vector
from streams.schema import EventValidator, Item

log = logging.getLogger(__name__)

#: Builds the source that reads the items topic from {partition: next offset}.
SourceFactory = Callable[[Mapping[int, int]], MessageSource]


class IndexReplica:
    """Applies item events to an :class:`AnnIndex` in a background thread.

    The thread first loads the last snapshot, then follows the topic from the offsets the
    snapshot covers. ``ready`` turns true once the replica has caught up with the topic for
    the first time; until then /health reports it as loading (``phase`` says which step),
    and the process serves feeds from whatever the replica holds so far.
    """

    def __init__(
        self,
        *,
        topic: str,
        dim: int,
        source_factory: SourceFactory,
        validator: EventValidator,
        snapshot_dir: Path | None = None,
        snapshot_every_s: float = 60.0,
        index_factory: Callable[[], AnnIndex] | None = None,
        batch_size: int = 2000,
        poll_timeout_s: float = 0.05,
    ) -> None:
        self.topic = topic
        self.dim = dim
        self.source_factory = source_factory
        self.validator = validator
        self.snapshot_dir = snapshot_dir
        self.snapshot_every_s = snapshot_every_s
        self.index_factory = index_factory or (lambda: HnswIndex(dim))
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.index: AnnIndex = self.index_factory()
        self.offsets: dict[int, int] = {}  # partition -> last applied offset
        # The catalog as the items topic tells it: filters read it without a store round trip.
        self.catalog: dict[str, ItemMeta] = {}
        self.ready = threading.Event()
        self.applied = 0
        self.skipped = 0
        self.restored_from: str | None = None
        #: "starting", "loading snapshot", "catching up", then "ready".
        self.phase = "starting"
        self._restored = threading.Event()  # the snapshot is loaded (or there was none)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._source: MessageSource | None = None
        self._last_snapshot = time.monotonic()
        # Measured by the replica's own thread: Kafka clients are not to be shared with the
        # HTTP threads that read status().
        self._lag: int | None = None

    def start(self) -> None:
        """Load the last snapshot (if any) and follow the topic from where it ends, in the
        background: a large snapshot must not keep the process from answering /health."""
        self._thread = threading.Thread(target=self._run, name="index-replica", daemon=True)
        self._thread.start()

    def _restore(self) -> None:
        if self.snapshot_dir is None or not (self.snapshot_dir / "CURRENT").exists():
            return
        self.phase = "loading snapshot"
        try:
            index, meta = type(self.index).load(self.snapshot_dir)
        except (OSError, ValueError) as exc:
            log.warning("index snapshot unusable (%s); rebuilding from the topic", exc)
            return
        if meta.get("topic") != self.topic or index.dim != self.dim:
            log.warning("index snapshot is for another topic or dimension; rebuilding")
            return
        self.index = index
        self.offsets = {int(p): int(o) for p, o in meta.get("offsets", {}).items()}
        self.catalog = {
            i: ItemMeta(row[0], row[1], int(row[2]), bool(row[3]))
            for i, row in meta.get("catalog", {}).items()
        }
        self.restored_from = str(self.snapshot_dir)
        log.info("index replica restored %d items from its snapshot", len(index))

    def _run(self) -> None:
        try:
            self._restore()
        except Exception:  # noqa: BLE001 - a snapshot is only a shortcut
            log.exception("index snapshot could not be loaded; rebuilding from the topic")
            self.index, self.offsets, self.catalog = self.index_factory(), {}, {}
        self._restored.set()
        self.phase = "catching up"
        if self._stop.is_set():
            return
        self._source = self.source_factory({p: o + 1 for p, o in self.offsets.items()})
        self._last_snapshot = time.monotonic()
        while not self._stop.is_set():
            try:
                messages = self._source.poll_batch(self.batch_size, self.poll_timeout_s)
                if messages:
                    self.apply(messages)
                else:
                    self._lag = sum(self._source.lag().values())
                    if not self.ready.is_set() and self._lag == 0:
                        self.phase = "ready"
                        self.ready.set()
                        log.info("index replica caught up: %d items", len(self.index))
                if time.monotonic() - self._last_snapshot >= self.snapshot_every_s:
                    self.snapshot()
            except Exception:  # noqa: BLE001 - the replica must outlive any one bad batch
                log.exception("index replica batch failed; continuing")
                self._stop.wait(1.0)

    def apply(self, messages: list[RawMessage]) -> None:
        """Apply a batch of raw item messages: the last event of each item wins."""
        latest: dict[str, Item] = {}
        now_ms = int(time.time() * 1000)
        for msg in messages:
            self.offsets[msg.partition] = max(msg.offset, self.offsets.get(msg.partition, -1))
            try:
                item = self.validator.decode(Item, msg.value, now_ms=now_ms)
            except InvalidEventError:
                self.skipped += 1  # the worker dead-letters it; here it is only left out
                continue
            latest[item.item_id] = item
        upserts: dict[str, np.ndarray] = {}
        removals: list[str] = []
        for item_id, item in latest.items():
            self.catalog[item_id] = item_meta(item)
            vector = item_vector(item, self.dim) if item.op == "upsert" else None
            if item.op == "upsert" and item.available and vector is not None:
                upserts[item_id] = vector
            else:
                removals.append(item_id)
        if upserts:
            self.index.upsert(list(upserts), np.stack(list(upserts.values())))
        if removals:
            self.index.remove(removals)
        self.applied += len(latest)

    def snapshot(self) -> None:
        """Save the index with the offsets it covers (atomically).

        Only the replica's thread (or :meth:`stop`, once that thread has ended) may call it:
        the offsets must be those of exactly what the index holds.
        """
        self._last_snapshot = time.monotonic()
        if self.snapshot_dir is None or not self._restored.is_set():
            return  # a replica still loading would overwrite a good snapshot with less
        meta = {
            "topic": self.topic,
            "offsets": {str(p): o for p, o in self.offsets.items()},
            "catalog": {
                i: [m.category, m.creator, m.created_at_ms, m.available]
                for i, m in self.catalog.items()
            },
        }
        self.index.save(self.snapshot_dir, meta)

    def status(self) -> dict[str, Any]:
        """What /health shows about the replica."""
        return {
            "ready": self.ready.is_set(),
            "phase": self.phase,
            "items": len(self.index),
            "applied": self.applied,
            "skipped": self.skipped,
            "lag": self._lag,
            "restored_from_snapshot": self.restored_from is not None,
        }

    def stop(self) -> None:
        """Stop following the topic and write a last snapshot."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                # Still inside a batch: a snapshot now could pair offsets with another index.
                log.warning("index replica did not stop within 10 s; no final snapshot")
                return
        if self._source is not None:
            self._source.close()
        if self.snapshot_dir is not None and self._thread is not None:
            self.snapshot()
