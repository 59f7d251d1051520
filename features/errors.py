"""The root of every streamrec exception, and the one-line subclasses shared by all layers."""

from __future__ import annotations


class StreamrecError(Exception):
    """Root of all streamrec errors."""


class InvalidEventError(StreamrecError):
    """An event failed validation; the message is the precise reason."""


class StoreUnavailableError(StreamrecError):
    """The live-state store cannot be reached."""


class ConflictError(StreamrecError):
    """A guarded write found the state changed since it was read; recompute and retry."""


class TransportUnavailableError(StreamrecError):
    """The event transport (Kafka) cannot be reached or is full."""
