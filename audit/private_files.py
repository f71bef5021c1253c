"""Files the product writes that may hold PHI, tokens or audit records: 0600, in 0700 directories.

Why: a process umask only takes bits away, and the operator's may be 022 (the default), which leaves audit
journal segments and evidence bundles readable by every account on the host (issue 16). So every such file is
created with an explicit mode and ``fchmod``-ed (a file left by an earlier, laxer version is tightened too), and
every directory that holds them is created 0700 and ``chmod``-ed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700


def private_directory(path: Path) -> Path:
    """Create ``path`` (and missing parents, also 0700) and make it 0700 even if it existed."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        directory.mkdir(mode=DIRECTORY_MODE, exist_ok=True)
    os.chmod(path, DIRECTORY_MODE)
    return path


def open_private_fd(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """An ``os.open`` descriptor of a file that is 0600 whatever the umask, or an older file's mode, was."""
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private(path: Path, mode: str = "wb", **kwargs: Any) -> IO[Any]:
    """``open(path, mode)`` for writing, truncating, the file 0600."""
    if mode not in ("w", "wb"):
        raise ValueError(f"open_private writes new files only, not mode {mode!r}")
    return os.fdopen(open_private_fd(path), mode, **kwargs)


def write_private_bytes(path: Path, data: bytes) -> None:
    with open_private(path, "wb") as handle:
        handle.write(data)
