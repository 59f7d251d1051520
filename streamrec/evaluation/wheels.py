"""Data files that ship inside a wheel on PyPI, fetched by pip and pinned by SHA-256.

Public datasets are easiest to reach where pip already reaches: several packages carry a
sample in their wheel (the Open Bandit Dataset in ``obp``, MovieLens-100K in ``recbole``).
:func:`fetch_pinned_wheel` downloads one pinned wheel with ``pip download --no-deps
--only-binary=:all:`` (so nothing is built or installed, and pip's proxy and index settings
apply), refuses any file whose SHA-256 is not the pinned one, and keeps it in a cache
directory; :func:`extract_pinned_member` copies one member out of it, checked the same way.
The packages themselves are never imported.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from features.errors import StreamrecError


class WheelFetchError(StreamrecError):
    """A pinned wheel, or a file inside it, could not be fetched or did not match its pin."""


class PyPIUnreachableError(WheelFetchError):
    """pip could not download a pinned wheel because PyPI cannot be reached."""


def fetch_pinned_wheel(
    package: str, version: str, wheel_name: str, sha256: str, cache_dir: Path
) -> Path:
    """``cache_dir / wheel_name``, downloaded once by pip and checked against ``sha256``.

    A cached file with the pinned digest is reused without running pip; any other file
    of that name is replaced. Raises :class:`PyPIUnreachableError` (one line) when PyPI
    cannot be reached, else :class:`WheelFetchError`.
    """
    wheel = cache_dir / wheel_name
    if wheel.is_file() and sha256_of(wheel) == sha256:
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--disable-pip-version-check", "--no-input", "--retries", "1"]
        command += ["--timeout", "20", "-d", tmp, f"{package}=={version}"]
        # A fixed argument list, no shell; the interpreter is our own.
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)  # noqa: S603
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            reason = _pypi_unreachable(package)
            if reason is not None:
                raise PyPIUnreachableError(f"{reason}; pip said: {said}")
            raise WheelFetchError(f"pip download {package}=={version} failed: {said}")
        downloaded = Path(tmp) / wheel_name
        if not downloaded.is_file() or sha256_of(downloaded) != sha256:
            raise WheelFetchError(f"pip did not produce {wheel_name} with SHA-256 {sha256}")
        shutil.move(downloaded, wheel)
    return wheel


def extract_pinned_member(wheel: Path, member: str, sha256: str, target: Path) -> Path:
    """``target``: ``member`` of ``wheel``, written whole or not at all, checked by SHA-256.

    Examples:
        >>> import hashlib, pathlib, tempfile, zipfile
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> with zipfile.ZipFile(root / "demo.whl", "w") as zf:
        ...     zf.writestr("demo/data.tsv", "a\\tb\\n")
        >>> wheel, pin = root / "demo.whl", hashlib.sha256(b"a\\tb\\n").hexdigest()
        >>> extract_pinned_member(wheel, "demo/data.tsv", pin, root / "out.tsv").read_text()
        'a\\tb\\n'
        >>> extract_pinned_member(wheel, "demo/data.tsv", "0" * 64, root / "x")  # doctest:+ELLIPSIS
        Traceback (most recent call last):
        ...
        streamrec.evaluation.wheels.WheelFetchError: demo/data.tsv in demo.whl has SHA-256 ...
        >>> sorted(p.name for p in root.iterdir())  # nothing half-written is left behind
        ['demo.whl', 'out.tsv']
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    partial = Path(name)
    try:
        with os.fdopen(handle, "wb") as out, zipfile.ZipFile(wheel) as zf, zf.open(member) as raw:
            digest = hashlib.sha256()
            while chunk := raw.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise WheelFetchError(
                f"{member} in {wheel.name} has SHA-256 {digest.hexdigest()}, not {sha256}"
            )
        os.replace(partial, target)
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        raise WheelFetchError(f"cannot extract {member} from {wheel.name}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def sha256_of(path: Path) -> str:
    """The file's SHA-256, hex."""
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _pypi_unreachable(package: str) -> str | None:
    """Why PyPI cannot be reached (urllib honours the proxy variables, as pip does), or None."""
    probe = f"https://pypi.org/simple/{package}/"
    try:
        with urllib.request.urlopen(probe, timeout=15):  # noqa: S310 - a fixed https URL
            return None
    except (urllib.error.URLError, OSError) as exc:
        return f"{probe} unreachable ({exc})"
