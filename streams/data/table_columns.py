"""Table rows (CSV, TSV, Parquet or JSON objects of a public dataset) as interactions: which
column holds which field (:class:`ColumnMapping`), how event names map to our types, and the
conversion of one row into a validated :class:`Interaction` or a rejection reason."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol, TypeAlias, get_args

import msgspec

from features.errors import InvalidEventError, StreamrecError
from streams.schema import EventValidator, Interaction, InteractionType

TsUnit: TypeAlias = Literal["s", "ms"]


class ColumnMappingError(StreamrecError):
    """A column mapping cannot be parsed, or does not fit the options."""


class MissingColumnError(ColumnMappingError):
    """A mapped column is not in the file's header."""


#: Event names of common datasets (RetailRocket: view, addtocart, transaction) and our own
#: types, after lower-casing and turning ``-`` and spaces into ``_``.
DEFAULT_TYPE_MAP: Mapping[str, InteractionType] = MappingProxyType(
    {
        **{t: t for t in get_args(InteractionType)},
        "pageview": "view",
        "detail": "view",
        "impression": "view",
        "clicks": "click",
        "addtocart": "add_to_cart",
        "cart": "add_to_cart",
        "add_to_basket": "add_to_cart",
        "transaction": "purchase",
        "buy": "purchase",
        "buys": "purchase",
        "order": "purchase",
        "favorite": "like",
        "favourite": "like",
        "fav": "like",
    }
)

_FIELDS = ("user", "item", "ts", "session", "type", "rating", "event_id")
REQUIRED = ("user", "item", "ts")


@dataclass(frozen=True, slots=True)
class ColumnMapping:
    """Which column of a table holds each interaction field.

    Examples:
        >>> m = ColumnMapping.parse("user=UserId, item=ItemId, ts=Time, rating=Rating")
        >>> m.user, m.rating, m.session
        ('UserId', 'Rating', None)
        >>> ColumnMapping.parse("user=UserId,ts=Time")
        Traceback (most recent call last):
        ...
        streams.data.table_columns.ColumnMappingError: --columns lacks item= (required: user, \
item, ts)
        >>> ColumnMapping.parse("user=u,item=i,ts=t,colour=c")
        Traceback (most recent call last):
        ...
        streams.data.table_columns.ColumnMappingError: --columns: unknown field 'colour' \
(known: user, item, ts, session, type, rating, event_id)
    """

    user: str
    item: str
    ts: str
    session: str | None = None
    type: str | None = None
    rating: str | None = None
    event_id: str | None = None

    @classmethod
    def parse(cls, spec: str) -> ColumnMapping:
        """Parse ``field=Column,field=Column,...``."""
        given: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, column = (s.strip() for s in part.partition("="))
            if not sep or not column:
                raise ColumnMappingError(f"--columns: expected field=Column, got {part!r}")
            if name not in _FIELDS:
                raise ColumnMappingError(
                    f"--columns: unknown field {name!r} (known: {', '.join(_FIELDS)})"
                )
            if name in given:
                raise ColumnMappingError(f"--columns: {name}= is given twice")
            given[name] = column
        for name in REQUIRED:
            if name not in given:
                raise ColumnMappingError(
                    f"--columns lacks {name}= (required: {', '.join(REQUIRED)})"
                )
        return cls(**given)

    @classmethod
    def ours(cls, header: Iterable[str]) -> ColumnMapping:
        """Our own field names, for a table without ``--columns``; optional ones if present."""
        present = set(header)
        optional = {"session": "session_id", "type": "type", "rating": "rating"}
        optional["event_id"] = "event_id"
        return cls(
            user="user_id",
            item="item_id",
            ts="ts",
            **{name: col for name, col in optional.items() if col in present},
        )

    def used(self) -> dict[str, str]:
        """Field → column, for the fields that are mapped."""
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}


class ConversionRules(Protocol):
    """How row values become an interaction (``streams.data.readers.ReadOptions`` is one)."""

    @property
    def ts_unit(self) -> TsUnit: ...
    @property
    def type_from_rating(self) -> float | None: ...
    @property
    def default_type(self) -> InteractionType: ...
    @property
    def type_map(self) -> Mapping[str, InteractionType]: ...
    @property
    def validator(self) -> EventValidator: ...


def parse_ts(text: str, unit: TsUnit) -> int:
    """Milliseconds since the epoch from a number in ``unit`` or an ISO-8601 date.

    ISO dates without a zone are UTC (YooChoose writes ``2014-04-07T10:51:09.277Z``).

    Examples:
        >>> parse_ts("1433221332", "s"), parse_ts("1433221332117", "ms"), parse_ts("1.5", "s")
        (1433221332000, 1433221332117, 1500)
        >>> parse_ts("2014-04-07T10:51:09.277Z", "ms")
        1396867869277
    """
    try:
        value = float(text)
    except ValueError:
        when = datetime.fromisoformat(text.strip())
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return round(when.timestamp() * 1000)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return round(value * 1000) if unit == "s" else round(value)


class RowConverter:
    """Turns one mapped row into a validated :class:`Interaction`, or a rejection reason."""

    def __init__(
        self,
        mapping: ColumnMapping,
        options: ConversionRules,
        header: Iterable[str],
        path: Path,
        now_ms: int,
        defaulted: bool = False,
    ) -> None:
        columns = set(header)
        for name, column in mapping.used().items():
            if column not in columns:
                raise MissingColumnError(
                    f"column {column!r} ({name}=) is not in {path.name}; "
                    f"its columns are: {', '.join(sorted(columns)) or '(none)'}"
                    + ("; map them with --columns" if defaulted else "")
                )
        if options.type_from_rating is not None and mapping.rating is None:
            raise ColumnMappingError("--type-from-rating needs a rating= column in --columns")
        self.mapping, self.options, self.now_ms = mapping, options, now_ms
        self.used = mapping.used()

    def convert(self, row: Mapping[str, Any]) -> Interaction | str:
        m, options = self.mapping, self.options
        values = {name: _text(row.get(column)) for name, column in self.used.items()}
        for name in REQUIRED:
            if not values[name]:
                return f"empty {name} in column {self.used[name]}"
        try:
            ts = parse_ts(values["ts"], options.ts_unit)
        except ValueError:
            return f"bad ts in column {m.ts}"
        context: dict[str, str | int | float | bool] = {}
        rating: float | None = None
        if m.rating is not None and values["rating"]:
            try:
                rating = float(values["rating"])
            except ValueError:
                return f"bad rating in column {m.rating}"
            context["rating"] = rating
        if options.type_from_rating is not None:
            if rating is None:
                return f"empty rating in column {m.rating}"
            kind: InteractionType = "like" if rating >= options.type_from_rating else "view"
        elif m.type is not None:
            name = re.sub(r"[\s-]+", "_", values["type"].strip().lower())
            if name not in options.type_map:
                return f"unknown type {values['type'][:40]!r} in column {m.type}"
            kind = options.type_map[name]
        else:
            kind = options.default_type
        event_id = values.get("event_id") or row_id(values)
        try:
            event = msgspec.convert(
                {
                    "event_id": event_id,
                    "user_id": values["user"],
                    "item_id": values["item"],
                    "type": kind,
                    "ts": ts,
                    "session_id": values.get("session") or None,
                    "context": context,
                },
                Interaction,
            )
            options.validator.check(event, now_ms=self.now_ms)
        except (msgspec.ValidationError, InvalidEventError) as exc:
            return str(exc)
        return event


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def row_id(values: Mapping[str, str]) -> str:
    """A deterministic id from the row's mapped content.

    From the content, not the row number: replaying a file twice gives the same ids, and a
    row repeated verbatim (common in exported logs) is caught as a duplicate.
    """
    content = "\x1f".join(f"{k}={values[k]}" for k in sorted(values))
    return "row-" + hashlib.blake2b(content.encode(), digest_size=12).hexdigest()
