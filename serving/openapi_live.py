"""The OpenAPI document of the running configuration: what this server accepts, exactly.

The routes declare what never changes; these functions add what the configuration and the
clock decide, so a client generated from ``/openapi.json`` (or a fuzzer such as
schemathesis) never sends a request the spec allows and the server refuses:

- security only on the operations whose access policy requires a key;
- ``k`` up to ``serving.max_k``; ``window`` as the enum of the configured half-lives;
- an item's ``embedding`` of exactly the configured dimension, each value within float32;
- ``schema_version`` up to the one this server reads;
- ``ts`` from the oldest time the worker still counts (now minus its allowed lateness, less a
  margin so the document stays true for :data:`SPEC_VALID_S` after it was fetched) up to the
  furthest future it accepts, as of the fetch. The server judges by its own clock, which has
  moved on since: every ``ts`` the document allows is accepted, but a value just past either
  bound may be accepted too (a JSON Schema cannot say "now").

Pure functions over the spec dict: :func:`serving.app.create_app` calls them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams.schema import FLOAT32_LIMIT, SCHEMA_VERSION

#: How long a fetched document stays true about ``ts``: a client may build requests from it
#: for this long before its oldest allowed event time would be too late.
SPEC_VALID_S = 600.0
#: Operations that take ``k`` (how many items).
K_PATHS = ("/feed/{user_id}", "/similar/{item_id}", "/trending")


@dataclass(frozen=True)
class LiveLimits:
    """What the running configuration accepts."""

    max_k: int
    embedding_dim: int
    max_future_ms: int
    max_late_ms: int | None
    windows: list[str]


def drop_unrequired_security(
    spec: dict[str, Any], anonymous: Mapping[str, bool], default_anonymous: bool
) -> None:
    """Remove ``security`` from operations of paths that need no key (``anonymous[path]``,
    else ``default_anonymous``); drop the schemes when no operation needs one.

    Examples:
        >>> spec = {"paths": {"/a": {"get": {"security": [{"key": []}]}}},
        ...         "components": {"securitySchemes": {"key": {}}}}
        >>> drop_unrequired_security(spec, {"/a": True}, False)
        >>> spec
        {'paths': {'/a': {'get': {}}}, 'components': {}}
    """
    required = False
    for path, operations in spec.get("paths", {}).items():
        for operation in operations.values():
            if anonymous.get(path, default_anonymous):
                operation.pop("security", None)
            required = required or "security" in operation
    if not required:
        spec.get("components", {}).pop("securitySchemes", None)


def apply_limits(spec: dict[str, Any], limits: LiveLimits, now_ms: int) -> None:
    """Write the configuration's and the clock's limits into ``spec`` (in place)."""
    paths = spec.get("paths", {})
    for path in K_PATHS:
        for parameter in paths.get(path, {}).get("get", {}).get("parameters", []):
            if parameter.get("name") == "k":
                _set_number(parameter.get("schema", {}), "maximum", limits.max_k)
            if parameter.get("name") == "window" and path == "/trending":
                parameter["schema"] = {
                    "type": "string",
                    "enum": sorted(limits.windows),
                    "title": "Window",
                    "description": "Half-life, e.g. 1h or 86400",
                }
    schemas = spec.get("components", {}).get("schemas", {})
    latest = now_ms + limits.max_future_ms
    for name in ("Interaction", "Item"):
        ts = schemas.get(name, {}).get("properties", {}).get("ts")
        if ts is not None:
            ts["maximum"] = latest
            if name == "Interaction" and limits.max_late_ms is not None:
                margin = min(SPEC_VALID_S * 1000, limits.max_late_ms / 2)
                ts["minimum"] = max(0, int(now_ms - limits.max_late_ms + margin))
    for name in ("Interaction", "Item"):
        version = schemas.get(name, {}).get("properties", {}).get("schema_version")
        if version is not None:
            version["maximum"] = SCHEMA_VERSION  # newer ones are refused, not guessed at
    item = schemas.get("Item", {}).get("properties", {})
    if "embedding" in item:
        for option in item["embedding"].get("anyOf", []):
            if option.get("type") == "array":
                option["minItems"] = option["maxItems"] = limits.embedding_dim
                # Strictly inside float32: the validator refuses what would round to inf.
                bound = float(FLOAT32_LIMIT) * (1 - 1e-7)
                option["items"] = {"type": "number", "minimum": -bound, "maximum": bound}


def _set_number(schema: dict[str, Any], key: str, value: int) -> None:
    """Set a bound on a number schema, or on the number branch of an ``anyOf``."""
    options = schema.get("anyOf")
    if options is None:
        schema[key] = value
        return
    for option in options:
        if option.get("type") in ("integer", "number"):
            option[key] = value
