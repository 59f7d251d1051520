"""Counts every HTTP response by route, method and status: the 401/403/429 of the access
policy, the 413 of the body limit, the 503 of a full producer buffer and any 5xx show up in
Prometheus without each route counting its own."""

from __future__ import annotations

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Route label of a request no route matched (a 404 or 405 from the router).
UNMATCHED = "unmatched"


class ResponseCounter:
    """Pure ASGI middleware; labels by route *template* (``/feed/{user_id}``), so the
    label set stays bounded whatever paths clients send."""

    def __init__(self, app: ASGIApp, counter: Counter) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counted = False

        async def send_counted(message: Message) -> None:
            nonlocal counted
            if message["type"] == "http.response.start" and not counted:
                counted = True
                self._count(scope, int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except Exception:
            if not counted:
                self._count(scope, 500)  # the server error middleware answers it after us
            raise

    def _count(self, scope: Scope, status: int) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or UNMATCHED
        self.counter.labels(template, scope.get("method", "-"), str(status)).inc()
