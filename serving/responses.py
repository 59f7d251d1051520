"""JSON responses rendered by orjson: the hot path's serializer."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class JSONBytes(JSONResponse):
    """A JSON response serialized with orjson (numpy floats and dataclasses included).

    A JSONResponse so that FastAPI documents a route's body as the model its ``responses=``
    names (any other response class it documents as a string); only the type is borrowed.
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error(status: int, loc: list[str | int], message: str) -> JSONBytes:
    """A FastAPI-shaped error body naming the offending field."""
    return JSONBytes({"detail": [{"loc": loc, "msg": message}]}, status_code=status)
