"""`streamrec train embeddings`: behaviour-based item vectors from a recorded log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np

from features.keys import Keys
from streams.data.simulator import SimulatorConfig, StreamSimulator
from streams.schema import Interaction, Item, encode
from streams.worker.pipeline import run_pipeline

START = 1_700_000_000_000


def test_trained_embeddings_group_items_users_consume_together(tmp_path: Path) -> None:
    sim = StreamSimulator(SimulatorConfig(users=400, items=300, new_item_probability=0.0), seed=4)
    items = sim.initial_items(START)
    events = [e for e in sim.events(30_000, start_ms=START) if isinstance(e, Interaction)]
    (tmp_path / "items.jsonl").write_bytes(b"".join(encode(i) + b"\n" for i in items))
    (tmp_path / "log.jsonl").write_bytes(b"".join(encode(e) + b"\n" for e in events) + b"{bad\n")
    out = tmp_path / "upserts.jsonl"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamrec",
            "train",
            "embeddings",
            "--input",
            str(tmp_path / "log.jsonl"),
            "--items",
            str(tmp_path / "items.jsonl"),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"rejected_lines": 1' in result.stderr
    upserts = [msgspec.json.decode(line, type=Item) for line in out.read_bytes().splitlines()]
    assert len(upserts) > 250
    by_id = {i.item_id: i for i in items}
    for upsert in upserts:
        # Whole records: the compacted items topic keeps only an item's last record.
        assert upsert.category == by_id[upsert.item_id].category
        assert upsert.embedding is not None and len(upsert.embedding) == 64
    vectors = np.array([u.embedding for u in upserts])
    categories = np.array([u.category for u in upserts])
    cosine = vectors @ vectors.T
    same = categories[:, None] == categories[None, :]
    np.fill_diagonal(same, False)
    within = cosine[same].mean()
    across = cosine[~same & ~np.eye(len(upserts), dtype=bool)].mean()
    assert within > across + 0.2, (within, across)
    # Applied by the worker, they replace the content vectors.
    store, _, _ = run_pipeline([*items, *upserts])
    stored = store.get_bytes([Keys("sr").item_embedding(upserts[0].item_id)])[0]
    assert stored is not None
    assert np.allclose(np.frombuffer(stored, dtype=np.float32), upserts[0].embedding, atol=1e-6)
