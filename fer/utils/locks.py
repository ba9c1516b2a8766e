"""One sitting at a time: a lock file that says who holds it, released by the kernel when its holder dies.

A sitting (a sweep, a run's resume) takes `SittingLock(path, what)`: an
exclusive `fcntl.flock` on a small file holding the holder's pid, host and
start time. A second sitting fails at once with `LockHeld`, whose message
names the holder ("sweep 'tiny' is being run by pid 4242 on host gpu1 since
...: wait for it, or stop it"). The kernel drops the lock when the holder's
process ends, SIGKILL and power loss included, so a stale lock never blocks:
the next sitting simply takes it.

Example:
    with SittingLock(checkpoints / ".resume.lock", f"run {run_id} is being resumed"):
        ...  # only one process at a time gets here
"""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no sittings lock (the project runs on Linux and macOS)
    fcntl = None


class LockHeld(RuntimeError):
    """Another live sitting holds the lock; `holder` is what it wrote (pid, host, since)."""

    def __init__(self, message: str, holder: dict[str, str]):
        self.holder = holder
        super().__init__(message)


class SittingLock:
    """An exclusive lock on `path` for the `with` block; `what` completes "<what> by pid N on host H".

    `wait=True` blocks until the lock is free (for short critical sections),
    else a held lock raises LockHeld at once. The file is left in place (removing
    it would let a third sitting lock a different file of the same name).

    >>> import tempfile; folder = tempfile.mkdtemp()
    >>> with SittingLock(f"{folder}/x.lock", "x is in use"):  # doctest: +ELLIPSIS
    ...     try:
    ...         SittingLock(f"{folder}/x.lock", "x is in use").acquire()
    ...     except LockHeld as held:
    ...         print(str(held)[:22])
    x is in use by pid ...
    """

    def __init__(self, path: str | Path, what: str, *, wait: bool = False):
        self.path, self.what, self.wait = Path(path), what, wait
        self._file = None

    def acquire(self) -> SittingLock:
        if fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = _read_holder(file)
            file.close()
            raise LockHeld(f"{self.what} by pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since "
                           f"{holder.get('since', '?')}: wait for it to end, or stop it", holder) from None
        file.seek(0)
        file.truncate()
        since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        file.write(f"pid={os.getpid()}\nhost={socket.gethostname()}\nsince={since}\n")
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> SittingLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(file) -> dict[str, str]:
    file.seek(0)
    pairs = (line.partition("=") for line in file.read().splitlines())
    return {key: value for key, sep, value in pairs if sep}
