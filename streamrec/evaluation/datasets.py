"""Public interaction datasets, fetched from a pinned wheel on PyPI and read by our readers.

Each dataset is a :class:`DatasetSpec` in :data:`DATASETS`: the wheel that carries it (pinned
by version and SHA-256), the member file inside that wheel (pinned by SHA-256 too), and the
``--columns`` and ``--ts-unit`` that :func:`streams.data.readers.read_events` needs for it.
:func:`fetch_dataset` downloads the wheel with pip once (:mod:`streamrec.evaluation.wheels`),
extracts the member, and returns its path; later calls reuse the extracted file without pip.
The package that carries the data is never installed or imported.

``ml-100k``: MovieLens 100K, 100,000 ratings (1-5 stars) of 1,682 movies by 943 users,
1997-09-20 to 1998-04-22, from GroupLens Research, in the ``recbole`` 1.2.1 wheel as the
TSV ``ml-100k.inter`` (``user_id:token``, ``item_id:token``, ``rating:float``,
``timestamp:float`` in unix seconds). The rows are not in time order: the readers sort them
in memory (a stable sort, so ties keep file order), so do not pass ``--assume-sorted``.
Every row is one interaction of the readers' default type (``click``), with its rating in
``context["rating"]``; ``--type-from-rating 4`` makes 4-5 stars a ``like`` and 1-3 a
``view`` instead.

Licence: the MovieLens data are GroupLens's, not recbole's (MIT) nor ours. GroupLens's terms
allow research use, forbid redistribution without their permission, and ask that
publications cite F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets:
History and Context. ACM Transactions on Interactive Intelligent Systems (TiiS) 5, 4,
Article 19. https://doi.org/10.1145/2827872. So the data are only ever cached under
``.streamrec/`` (git-ignored): never commit them or ship them in an artifact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import TypedDict

from streamrec.evaluation.wheels import (
    PyPIUnreachableError,
    WheelFetchError,
    extract_pinned_member,
    fetch_pinned_wheel,
    sha256_of,
)
from streams.data.table_columns import TsUnit

#: Extracted files go to ``<dir>/<name>/``, the wheels they come from to ``<dir>/wheels/``.
DEFAULT_DATASET_DIR = Path(".streamrec/datasets")


class DatasetError(WheelFetchError):
    """A public dataset is not known, or could not be fetched."""


class DatasetUnreachableError(DatasetError, PyPIUnreachableError):
    """A dataset's wheel cannot be downloaded because PyPI cannot be reached."""


class ReadArgs(TypedDict):
    """The reader flags of a dataset, as ``read_options(settings, **args, ...)`` takes them."""

    columns: str
    ts_unit: TsUnit


@dataclass(frozen=True)
class DatasetSpec:
    """Where a public dataset is, how it is pinned, and how the readers read it."""

    name: str
    #: The PyPI package, version and wheel file that carry the data.
    package: str
    version: str
    wheel_name: str
    wheel_sha256: str
    #: The interactions file inside the wheel, and its own SHA-256.
    member: str
    member_sha256: str
    #: Reader field (``user``, ``item``, ``ts``, ``rating``, ...) → the file's column.
    columns: Mapping[str, str]
    #: Unit of the numeric ``ts`` column.
    ts_unit: TsUnit
    description: str
    #: The data's licence and the citation it asks for.
    licence: str

    @property
    def file_name(self) -> str:
        """The extracted file's name: the member's own."""
        return PurePosixPath(self.member).name


DATASETS: dict[str, DatasetSpec] = {
    "ml-100k": DatasetSpec(
        name="ml-100k",
        package="recbole",
        version="1.2.1",
        wheel_name="recbole-1.2.1-py3-none-any.whl",
        wheel_sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        member="recbole/dataset_example/ml-100k/ml-100k.inter",
        member_sha256="4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
        columns=MappingProxyType(
            {
                "user": "user_id:token",
                "item": "item_id:token",
                "ts": "timestamp:float",
                "rating": "rating:float",
            }
        ),
        ts_unit="s",
        description="MovieLens 100K: 100,000 ratings (1-5) of 1,682 movies by 943 users, "
        "1997-09 to 1998-04",
        licence="GroupLens terms (research use, no redistribution); cite F. Maxwell Harper and "
        "Joseph A. Konstan. 2015. The MovieLens Datasets: History and Context. ACM TiiS 5, 4",
    ),
}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of ``name``; a :class:`DatasetError` naming the known ones otherwise.

    Examples:
        >>> dataset_spec("ml-100k").package
        'recbole'
        >>> dataset_spec("ml-1m")
        Traceback (most recent call last):
        ...
        streamrec.evaluation.datasets.DatasetError: unknown dataset 'ml-1m' (known: ml-100k)
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r} (known: {', '.join(sorted(DATASETS))})")
    return DATASETS[name]


def dataset_read_args(spec: DatasetSpec) -> ReadArgs:
    """The ``--columns`` and ``--ts-unit`` values that read ``spec``'s file.

    Examples:
        >>> dataset_read_args(DATASETS["ml-100k"])  # doctest: +NORMALIZE_WHITESPACE
        {'columns': 'user=user_id:token,item=item_id:token,ts=timestamp:float,rating=rating:float',
         'ts_unit': 's'}
    """
    columns = ",".join(f"{field}={column}" for field, column in spec.columns.items())
    return {"columns": columns, "ts_unit": spec.ts_unit}


def fetch_dataset(name: str, cache_dir: Path = DEFAULT_DATASET_DIR) -> Path:
    """The path of ``name``'s interactions file, fetched and extracted on first use.

    An extracted file with the pinned SHA-256 is reused without pip; a missing or altered
    one is extracted again from the cached wheel, which pip downloads only when it too is
    missing or altered. Every failure is a :class:`DatasetError`; an unreachable PyPI is
    also a :class:`PyPIUnreachableError`.
    """
    spec = dataset_spec(name)
    target = cache_dir / spec.name / spec.file_name
    if target.is_file() and sha256_of(target) == spec.member_sha256:
        return target
    try:
        wheel = fetch_pinned_wheel(
            spec.package, spec.version, spec.wheel_name, spec.wheel_sha256, cache_dir / "wheels"
        )
        return extract_pinned_member(wheel, spec.member, spec.member_sha256, target)
    except PyPIUnreachableError as exc:
        raise DatasetUnreachableError(f"dataset {name}: {exc}") from None
    except WheelFetchError as exc:
        raise DatasetError(f"dataset {name}: {exc}") from None
