"""Atomic outputs: a file written for a user appears whole, or the old one stays, never a torn one.

The file is written to a temporary name in the target's own folder (so the
final `os.replace` is a rename within one filesystem, atomic on POSIX), flushed
to disk (`fsync`), and renamed into place only when the writer finished
without an error. On any failure, Ctrl-C included, the temporary file is
removed. An OSError on the way becomes an `OutputError` of one line: what was
being written, where, and why in plain words (disk full, permission denied,
not a folder, read-only filesystem), which a command prints and exits 1 on.

Example:
    with atomic_output("out/model.onnx", "the exported model") as tmp:
        network.export(str(tmp), format="onnx")  # tmp keeps the suffix: writers that go by it still work
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

# errno -> why, in words a user can act on.
REASONS = {
    errno.ENOSPC: "disk full (no space left on the device): free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded: free some space or write elsewhere",
    errno.EFBIG: "file too large for this filesystem or a size limit (ulimit -f): write elsewhere",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "permission denied: choose a folder you can write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder: give a path under a folder",
    errno.EEXIST: "a part of the path is a file, not a folder: give a path under a folder",
    errno.EISDIR: "it is a folder: give a file name",
    errno.EROFS: "read-only filesystem: write elsewhere",
    errno.ENOENT: "its folder does not exist and could not be made",
}


class OutputError(OSError):
    """A file could not be written; the message is one line: what, where, why (and what to do).

    `errno` is the OSError's number when there was one. Commands turn it into
    an error message and exit status 1; nothing torn is left at `path`. An
    OSError still, so code that goes on without an optional file (the data
    cache) catches it as before.

    >>> str(OutputError("the CSV", "out/p.csv", "disk full"))
    'Cannot write the CSV to out/p.csv: disk full'
    """

    def __init__(self, what: str, path: str | Path, why: str, errno_: int | None = None):
        super().__init__(f"Cannot write {what} to {path}: {why}")
        self.what, self.path, self.why, self.errno = what, Path(path), why, errno_

    def __str__(self) -> str:
        return self.args[0]


def output_error(err: OSError, what: str, path: str | Path) -> OutputError:
    """The OutputError for `err`, an OSError met while writing `what` to `path` (an OutputError as it is).

    >>> import errno
    >>> output_error(OSError(errno.ENOSPC, "No space left on device"), "the CSV", "p.csv").why.split(" (")[0]
    'disk full'
    """
    if isinstance(err, OutputError):
        return err
    why = REASONS.get(err.errno) or (err.strerror or str(err) or type(err).__name__)
    return OutputError(what, path, why, err.errno)


def make_parent(path: str | Path, what: str = "the file") -> None:
    """Make the folder `path` goes in (and those above it); OutputError when a part of it is a file, or unwritable."""
    parent = Path(path).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(err, what, path) from None


class AtomicOutput:
    """A file (or folder) being written to `temporary`, beside `path`: `commit` renames it into place, `discard` drops it.

    For writers that stay open across calls (a video encoder, a CSV written
    frame by frame); a block of code uses `atomic_output` instead. Making the
    folder is checked here: OutputError when a part of the path is a file or
    cannot be written.

    Example:
        output = AtomicOutput("out.mp4", "the annotated video")
        writer = cv2.VideoWriter(str(output.temporary), fourcc, fps, size)
        ...
        writer.release()
        output.commit()  # or output.discard() when the writing failed
    """

    def __init__(self, path: str | Path, what: str = "the file", *, sync: bool = True):
        # Through a link to the file it names: the link stays a link (a rename onto it would replace it).
        self.path = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)
        self.what, self.sync = what, sync
        make_parent(self.path, what)
        # The suffix is kept: encoders and exporters choose their format by it.
        # The last two suffixes are kept: Keras wants ".weights.h5", encoders and exporters go by the last.
        self.temporary = self.path.with_name(
            f".{self.path.name}.{os.getpid()}-{secrets.token_hex(3)}.tmp{''.join(self.path.suffixes[-2:])}")

    def commit(self) -> Path:
        """Sync the written output and rename it to `path`; OutputError (and nothing left behind) if that fails."""
        try:
            if not self.temporary.exists():
                raise OutputError(self.what, self.path, "the writer wrote nothing")
            if self.sync:
                _sync(self.temporary)
            _replace(self.temporary, self.path)
            if self.sync:
                _sync_folder(self.path.parent)
        except OSError as err:
            self.discard()
            raise output_error(err, self.what, self.path) from None
        except BaseException:
            self.discard()
            raise
        return self.path

    def discard(self) -> None:
        """Remove what was written; `path` stays as it was."""
        _remove(self.temporary)

    def fail(self, why: str) -> OutputError:
        """Discard the output and return the OutputError saying `why` (for a writer that reports no OSError)."""
        self.discard()
        return OutputError(self.what, self.path, why)


@contextlib.contextmanager
def atomic_output(path: str | Path, what: str = "the file", *, sync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it is synced and renamed to `path`.

    The temporary name keeps `path`'s suffixes (encoders and exporters choose
    their format by them). It may become a file or a folder (a SavedModel): a
    folder replaces an old folder at `path` too. On any exception, the
    temporary output is removed and `path` is left as it was; an OSError
    (from the block, the sync or the rename) is raised as OutputError.

    Example:
        with atomic_output(Path("plots") / "history.png", "the history plot") as tmp:
            figure.savefig(tmp)
    """
    output = AtomicOutput(path, what, sync=sync)
    try:
        yield output.temporary
    except OSError as err:
        output.discard()
        raise output_error(err, what, path) from None
    except BaseException:
        output.discard()
        raise
    output.commit()


def write_atomic(path: str | Path, data: bytes | str, what: str = "the file", *, sync: bool = True) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically (`atomic_output`); the path.

    >>> import tempfile; folder = tempfile.mkdtemp()
    >>> write_atomic(f"{folder}/note.txt", "hello\\n").read_text()
    'hello\\n'
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_output(path, what, sync=sync) as temporary:
        with open(temporary, "wb") as file:
            file.write(payload)
    return Path(path)


def _sync(path: Path) -> None:
    """Flush a written file (or every file in a written folder) to the disk before it is renamed into place."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        descriptor = os.open(file, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _sync_folder(folder: Path) -> None:
    """The rename itself is on disk once the folder is synced; a filesystem that cannot sync folders is skipped."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _replace(temporary: Path, path: Path) -> None:
    if temporary.is_dir() and path.is_dir():  # os.replace cannot put a folder over a non-empty one
        old = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}.old")
        os.replace(path, old)
        os.replace(temporary, path)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(temporary, path)


def _remove(temporary: Path) -> None:
    with contextlib.suppress(OSError):
        if temporary.is_dir():
            shutil.rmtree(temporary)
        else:
            temporary.unlink()
