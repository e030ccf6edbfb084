"""A full disk or quota, told apart from other write errors (torch-free: the join process uses it too)."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FULL_MESSAGES = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")
LOW_SPACE = 64 * 2**20  # bytes: below this much free space, a failed torch write is taken for a full disk


class DiskFull(OSError):
    """No space left on the device (or quota) where a file was being written; partial files were removed.

    Resumable: nothing before the failed write was touched, so once space is freed the unit runs again."""

    def __init__(self, path: Path | str, cause: BaseException | None = None) -> None:
        super().__init__(errno.ENOSPC, f"no space left on device at {path}")
        self.path = str(path)
        self.cause = cause

    def __str__(self) -> str:
        return f"no space left on device at {self.path}"


def disk_full_error(err: BaseException, where: Path | str) -> DiskFull | None:
    """`err` as a DiskFull at `where` when it was a full disk or quota, else None.

    Libraries that wrap the OSError (safetensors) keep its words. torch's zip writer reports ENOSPC as `RuntimeError: [enforce fail at inline_container.cc:…] … file write
    failed`; that one counts when the device at `where` is (nearly) out of space.
    """
    if isinstance(err, DiskFull):
        return err
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in FULL_ERRNOS:
            return DiskFull(seen.filename or where, err)
        seen = seen.__cause__ or seen.__context__
    text = str(err)
    if any(m in text for m in FULL_MESSAGES):  # e.g. safetensors: "I/O error: No space left on device (os error 28)"
        return DiskFull(where, err)
    if isinstance(err, RuntimeError) and ("write" in text or "inline_container" in text):
        probe = Path(where)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            if shutil.disk_usage(probe).free < LOW_SPACE:
                return DiskFull(where, err)
        except OSError:
            pass
    return None
