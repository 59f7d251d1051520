"""The estimators on real logged bandit data: the Open Bandit Dataset small sample.

The obp 0.4.1 wheel is downloaded from PyPI once (pip, SHA-256 checked) into pytest's cache.
The tests skip only when PyPI cannot be reached, and say so; any other failure fails.

What is asserted, and why that tolerance: the BTS log has 42 clicks in 10,000 rounds, so
BTS's *actual* click-rate is itself only known to about +-30% (its bootstrap 95% interval
is [0.30%, 0.56%] around 0.42%). So each estimate's 95% interval must contain BTS's actual
click-rate, and each point estimate must lie within 30% of it. Measured (seed 0): IPS +8%,
SNIPS +13%, DR +11%, and seeds 0-7 stay within +8..+16%.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import typer
import yaml
from typer.testing import CliRunner

from streamrec.commands import ope as ope_command
from streamrec.evaluation.obd import (
    PRIOR_MEMBER,
    PyPIUnreachableError,
    bts_action_dist,
    fetch_wheel,
    parse_prior,
    read_log,
    read_prior,
    validate_obd,
)

REL_TOLERANCE = 0.30


@pytest.fixture(scope="session")
def cache_dir(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(pytestconfig, "cache", None)  # None under -p no:cacheprovider
    return cache.mkdir("obp") if cache is not None else tmp_path_factory.mktemp("obp")


@pytest.fixture(scope="session")
def wheel(cache_dir: Path) -> Path:
    try:
        return fetch_wheel(cache_dir)
    except PyPIUnreachableError as exc:
        pytest.skip(f"PyPI unreachable: {exc}")


@pytest.fixture(scope="session")
def figures(wheel: Path) -> dict[str, Any]:
    started = time.perf_counter()
    out = validate_obd(wheel.parent, n_sim=100_000, n_bootstrap=1000, seed=0)
    out["test_seconds"] = time.perf_counter() - started
    return out


def test_prior_parser_reads_what_yaml_reads(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(PRIOR_MEMBER).decode()
    assert parse_prior(text) == yaml.safe_load(text)
    alpha, beta = read_prior(wheel, "all")
    assert alpha.shape == beta.shape == (80,)


def test_logs_are_what_obp_loads(wheel: Path) -> None:
    random_log, bts_log = read_log(wheel, "random"), read_log(wheel, "bts")
    assert random_log.n == bts_log.n == 10_000
    assert set(random_log.position.tolist()) == set(bts_log.position.tolist()) == {0, 1, 2}
    # The random policy shows each of 80 items at each position with probability 1/80.
    assert np.all(random_log.pscore == 0.0125)
    assert int(random_log.click.sum()) == 38 and int(bts_log.click.sum()) == 42


def test_action_distribution_is_thompson_sampling_from_the_prior(wheel: Path) -> None:
    alpha, beta = read_prior(wheel, "all")
    dist = bts_action_dist(alpha, beta, n_sim=50_000, seed=1)
    assert dist.shape == (80, 3)
    np.testing.assert_allclose(dist.sum(axis=0), 1.0)
    # obp's own loop: one Beta draw per item, items ranked by their draw, best first.
    rng = np.random.default_rng(2)
    reference = np.zeros((80, 3))
    for _ in range(20_000):
        reference[np.argsort(rng.beta(alpha, beta))[::-1][:3], [0, 1, 2]] += 1
    np.testing.assert_allclose(dist, reference / 20_000, atol=0.015)
    assert np.array_equal(dist, bts_action_dist(alpha, beta, n_sim=50_000, seed=1))


def test_bts_click_rate_is_recovered_from_the_random_log(figures: dict[str, Any]) -> None:
    truth = figures["bts_ctr"]["value"]
    assert truth == pytest.approx(0.0042)
    np.testing.assert_allclose(figures["action_dist"]["position_sums"], 1.0)
    for name in ("ips", "snips", "dr"):
        est = figures["estimates"][name]
        assert est["low"] <= truth <= est["high"], (name, est, truth)
        assert abs(est["rel_error"]) <= REL_TOLERANCE, (name, est)
        # The same holds with the distribution BTS actually showed that week.
        assert figures["realised"]["estimates"][name]["covers_truth"], name
    # Uniform logging over 80 items: weights average about 1.
    assert figures["weights"]["mean_weight"] == pytest.approx(1.0, abs=0.1)
    assert figures["test_seconds"] < 60


def test_cli_obd_prints_a_table_then_the_figures(wheel: Path) -> None:
    app = typer.Typer()
    ope_command.register(app, typer.Typer())
    app.command("noop")(lambda: None)  # a second command keeps `ope` a named subcommand
    args = ["ope", "--obd", "--cache-dir", str(wheel.parent), "--n-sim", "20000"]
    result = CliRunner().invoke(app, [*args, "--bootstrap", "200"])
    assert result.exit_code == 0, result.output
    *table, last = result.stdout.strip().splitlines()
    assert any("BTS" in line for line in table)
    assert set(orjson.loads(last)["estimates"]) == {"ips", "snips", "dr"}
