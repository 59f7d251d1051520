"""The processes we run: pid files, spawning, signalling, ownership checks, logs, the lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from streamrec.services.common import Layout, log

_STOP_TIMEOUT_S = 20.0


def failure_reason(log_file: Path, limit: int = 300) -> str:
    """The line of a failed start's log that best says why, or "" without a log.

    The first Java exception message names the root cause (the ERROR lines and the
    `Caused by` lines after it mostly repeat it); Redis logs its reason last.
    """
    try:
        with log_file.open("rb") as handle:
            text = handle.read(1 << 20).decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    exceptions = [line for line in lines if "Exception: " in line or "Error: " in line]
    errors = [line for line in lines if " ERROR " in line or " FATAL " in line]
    if exceptions or errors:
        return (exceptions or errors)[0][:limit]
    return lines[-1][:limit] if lines else ""


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def write_pid(pidfile: Path, pid: int) -> None:
    tmp = pidfile.with_suffix(".pid.tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(pidfile)


def is_running(pid: int, marker: str) -> bool:
    """Whether pid is alive and still the process we started (see _proc_matches)."""
    # A service we started in this very process turns into a zombie when it exits, and a
    # zombie still answers kill(0): reap it first.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if not Path("/proc").is_dir():
        return True  # no procfs (macOS): trust the pid
    # The pid may have been reused by an unrelated process since the pidfile was written.
    return _proc_matches(pid, marker)


def _proc_matches(pid: int, marker: str) -> bool:
    """Whether /proc shows pid alive, with marker in its command line or as its task name."""
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        name = (proc / "comm").read_text().strip()
        cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
    except (OSError, IndexError):
        return False
    # Redis blanks its command line for a moment while it retitles itself; its task name stays.
    # A zombie ("Z") has exited, and only waits for its parent to reap it.
    return state != "Z" and (marker in cmdline or marker == name)


def spawn(argv: list[str], log_file: Path) -> int:
    """Start argv in a new session, output appended to log_file, and return its pid."""
    # posix_spawn rather than Popen: the service must outlive us, and a Popen object that
    # is collected while its child still runs warns about it (ResourceWarning).
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        return os.posix_spawnp(
            argv[0],
            argv,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_DUP2, fd, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(fd)


def signal_group(pid: int, sig: signal.Signals) -> None:
    # Each service leads its own session, so its group also holds any helper it forked.
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop_process(name: str, pid: int, marker: str) -> None:
    """SIGTERM the service's group, and SIGKILL it if it is still there after a grace period."""
    log.info("stopping %s (pid %d)", name, pid)
    signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while is_running(pid, marker):
        if time.monotonic() >= deadline:
            log.warning(
                "%s (pid %d) ignored SIGTERM for %.0f s; killing it", name, pid, _STOP_TIMEOUT_S
            )
            signal_group(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
            while is_running(pid, marker) and time.monotonic() < deadline:
                time.sleep(0.1)
            return
        time.sleep(0.2)


def rotate_log(log_file: Path) -> None:
    # Keep the previous run's log: when a restart is needed, it usually explains why.
    if log_file.exists():
        log_file.replace(log_file.with_name(log_file.name + ".1"))


@contextlib.contextmanager
def held_lock(paths: Layout) -> Iterator[None]:
    """Serialise `services` commands on one data dir, so two `up`s never start two brokers."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with paths.lock.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another `streamrec services` command on %s", paths.root)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
