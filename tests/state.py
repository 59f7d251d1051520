"""Comparing live state across stores and runs, the way readers see it."""

from __future__ import annotations

from typing import Any

import pytest

from features.covisitation import FAMILY as COVIS_FAMILY
from features.decay import decay_rate, read_factor
from features.embeddings import EmbeddingState
from features.keys import Keys
from features.settings import FeatureSettings
from features.store import Store
from features.trending import Trending

#: Per-partition bookkeeping: it depends on how a transport partitions, not on the events.
PARTITION_KINDS = {"offsets", "watermarks", "workers", "landmarks", "eids"}


def readable_state(
    store: Store, keys: Keys, features: FeatureSettings, now_s: float
) -> dict[str, Any]:
    """Every key of the namespace, with forward-decayed sets read as decayed values at
    ``now_s`` (so the result does not depend on which landmark a run happened to pick)."""
    dump = store.dump(keys.prefix)
    landmarks = store.hgetall(keys.landmarks())
    out: dict[str, Any] = {}
    for key, value in dump.items():
        kind = key[len(keys.prefix) :].split(":")[0]
        if kind in PARTITION_KINDS:
            continue
        if kind == "trend":
            half_life = float(key[len(keys.prefix) :].split(":")[1])
            landmark = float(landmarks[Trending.family(half_life)])
            factor = read_factor(now_s, landmark, decay_rate(half_life))
            value = {m: s * factor for m, s in value.items()}  # type: ignore[union-attr]
        elif kind in ("sess", "user"):
            # Batches cut at different places sum the same events in another order (BLAS),
            # so embedding states are compared as numbers, not bytes.
            state = EmbeddingState.from_bytes(value, features.embedding_dim)  # type: ignore[arg-type]
            value = {
                "last_ts_ms": state.last_ts_ms,
                "count": state.count,
                "mass": state.mass,
                "total": [float(x) for x in state.total],
            }
        elif kind == "covis":
            landmark = float(landmarks[COVIS_FAMILY])
            factor = read_factor(now_s, landmark, decay_rate(features.covisitation_half_life_s))
            value = {m: s * factor for m, s in value.items()}  # type: ignore[union-attr]
        out[key] = value
    return out


def assert_same_state(actual: dict[str, Any], expected: dict[str, Any], rel: float = 1e-9) -> None:
    """Same keys; sorted sets equal to float rounding; everything else exactly equal."""
    missing, extra = expected.keys() - actual.keys(), actual.keys() - expected.keys()
    assert not missing and not extra, (
        f"{len(missing)} keys missing (e.g. {sorted(missing)[:5]}), "
        f"{len(extra)} unexpected (e.g. {sorted(extra)[:5]})"
    )
    for key, want in expected.items():
        got = actual[key]
        if isinstance(want, dict) and "total" in want:
            assert (got["last_ts_ms"], got["count"]) == (want["last_ts_ms"], want["count"]), key
            assert got["mass"] == pytest.approx(want["mass"], rel=1e-9), key
            assert got["total"] == pytest.approx(want["total"], rel=1e-4, abs=1e-5), key
        elif isinstance(want, dict) and want and isinstance(next(iter(want.values())), float):
            assert got.keys() == want.keys(), key
            wrong = [(m, got[m], w) for m, w in want.items() if got[m] != pytest.approx(w, rel=rel)]
            assert not wrong, f"{key}: {len(wrong)} of {len(want)} differ, e.g. {wrong[:3]}"
        else:
            assert got == want, key
