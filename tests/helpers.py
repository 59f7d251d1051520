"""Helpers for tests that run streamrec as real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
ARTIFACTS = Path(__file__).parent.parent / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], env: Mapping[str, str], log_name: str) -> subprocess.Popen[bytes]:
    """Start `streamrec ARGS` with its output in artifacts/LOG_NAME.log."""
    ARTIFACTS.mkdir(exist_ok=True)
    log = (ARTIFACTS / f"{log_name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "streamrec", *args],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float = 30.0) -> T:
    """Poll ``check`` until it returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last_error: Any = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, OSError) as exc:
            last_error = exc
        time.sleep(0.2)
    raise AssertionError(
        f"timed out after {timeout_s}s waiting for {what} (last error: {last_error})"
    )
