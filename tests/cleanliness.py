"""A test run leaves the work tree and the temporary directory as it found them.

``tests/conftest.py`` takes a ``Snapshot`` when the session starts and compares at the end, after every fixture
has been torn down: a new or changed file in ``git status`` (tracked or untracked, ignored files aside), or a new
name in /tmp (and in ``tempfile.gettempdir()`` if that is elsewhere), fails the run and names it.

Not counted, and why:

* ``HARNESS_TMP_NAMES``: what the machine's own tooling keeps in /tmp while it runs commands (job directories,
  ``mktemp`` files of the shell that started pytest), listed explicitly;
* this session's basetemp (``--basetemp``, or ``pytest-of-<user>``): pytest's own, cleaned by pytest (and by
  ``make test``, which removes the directory it gave);
* ``TEST_TMP_IGNORE``: comma-separated glob patterns of names in /tmp that other work on a shared machine
  creates meanwhile (other checkouts' test runs, package installs). Empty in CI;
* the directory named by ``PHIGATE_SCREENSHOTS_DIR`` (``make screenshots`` refreshes docs/screenshots/ on purpose).
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HARNESS_TMP_NAMES = ("bash_jobs.*", "bash_tool_*", "tmp.*")
GRACE_SECONDS = 10.0  # children that were just stopped may still be removing their own temporary files


def temp_roots() -> list[Path]:
    roots = [Path("/tmp")]
    own = Path(tempfile.gettempdir())
    if own.resolve() != roots[0].resolve():
        roots.append(own)
    return [root for root in roots if root.is_dir()]


def ignored_patterns() -> tuple[str, ...]:
    extra = tuple(p.strip() for p in os.environ.get("TEST_TMP_IGNORE", "").split(",") if p.strip())
    return HARNESS_TMP_NAMES + extra


def _git_status() -> dict[str, tuple[str, int, int]] | None:
    """Path -> (status, mtime_ns, size) of every path ``git status`` lists; None outside a git work tree."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain=v1", "-z", "--untracked-files=all"],
            cwd=REPO,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    listed: dict[str, tuple[str, int, int]] = {}
    entries = out.decode("utf-8", "surrogateescape").split("\0")
    index = 0
    while index < len(entries):
        entry = entries[index]
        index += 1
        if len(entry) < 4:
            continue
        status, path = entry[:2], entry[3:]
        if status[0] in "RC":  # a rename or copy is followed by its source path
            index += 1
        try:
            info = (REPO / path).lstat()
            listed[path] = (status, info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            listed[path] = (status, 0, -1)
    return listed


def _tmp_names() -> set[Path]:
    names: set[Path] = set()
    for root in temp_roots():
        try:
            names.update(root / name for name in os.listdir(root))
        except OSError:
            continue
    return names


@dataclass
class Snapshot:
    git: dict[str, tuple[str, int, int]] | None = field(default_factory=_git_status)
    tmp: set[Path] = field(default_factory=_tmp_names)

    def leftovers(self, basetemp: Path | None, screenshots: Path | None, grace: float = GRACE_SECONDS) -> list[str]:
        """What this session left behind, after waiting up to ``grace`` seconds for it to go away."""
        deadline = time.monotonic() + grace
        while True:
            found = self._compare(basetemp, screenshots)
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.5)

    def _compare(self, basetemp: Path | None, screenshots: Path | None) -> list[str]:
        found = []
        if self.git is not None:
            now = _git_status() or {}
            for path, state in sorted(now.items()):
                if self.git.get(path) == state or _under(REPO / path, screenshots):
                    continue
                found.append(f"work tree: {state[0].strip() or 'modified'} {path}")
        patterns = ignored_patterns()
        for path in sorted(_tmp_names() - self.tmp):
            if any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns):
                continue
            if basetemp is not None and (_under(basetemp, path) or _under(path, basetemp)):
                continue
            found.append(f"temporary directory: {path}")
        return found


def _under(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True
