"""Comparing live state across stores and runs, the way readers see it."""

from __future__ import annotations

from typing import Any

import pytest

from streams.data.verify import PARTITION_KINDS, readable_state

__all__ = ["PARTITION_KINDS", "assert_same_state", "readable_state"]


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
