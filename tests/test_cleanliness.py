"""The guard of tests/cleanliness.py sees what a test leaves in the work tree and in /tmp, and nothing else."""

from __future__ import annotations

import secrets
from pathlib import Path

from tests.cleanliness import REPO, Snapshot


def test_a_file_left_in_the_work_tree_or_tmp_is_named(tmp_path: Path) -> None:
    snapshot = Snapshot()
    token = secrets.token_hex(4)
    in_repo = REPO / f"leftover-probe-{token}.txt"
    in_tmp = Path("/tmp") / f"leftover-probe-{token}"
    harness = Path("/tmp") / f"tmp.probe{token}"  # the shell harness's mktemp names are not ours to judge
    try:
        in_repo.write_text("left behind")
        in_tmp.mkdir()
        harness.write_text("")
        (tmp_path / "inside-basetemp").write_text("pytest cleans this")
        found = snapshot.leftovers(basetemp=tmp_path.parent, screenshots=None, grace=0)
        assert f"work tree: ?? {in_repo.name}" in found
        assert f"temporary directory: {in_tmp}" in found
        assert not any(harness.name in line or "inside-basetemp" in line for line in found)
    finally:
        in_repo.unlink(missing_ok=True)
        in_tmp.rmdir()
        harness.unlink(missing_ok=True)
    found = snapshot.leftovers(basetemp=tmp_path.parent, screenshots=None, grace=0)
    assert not any(token in line for line in found)


def test_changes_under_the_explicit_screenshot_directory_are_allowed(tmp_path: Path) -> None:
    snapshot = Snapshot()
    folder = REPO / f"screenshot-probe-{secrets.token_hex(4)}"
    try:
        folder.mkdir()
        (folder / "queue.png").write_bytes(b"\x89PNG")
        assert not any(folder.name in line for line in snapshot.leftovers(None, folder, grace=0))
        assert any(folder.name in line for line in snapshot.leftovers(None, None, grace=0))
    finally:
        (folder / "queue.png").unlink(missing_ok=True)
        folder.rmdir()
