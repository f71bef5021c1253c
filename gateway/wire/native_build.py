"""Compile the masked relay's innermost loop (``gateway/wire/row_runs.py``) with mypyc: ``make native``.

The build is a copy of the source, renamed ``row_runs_native`` and stamped with the SHA-256 of the source it was
built from (``SOURCE_SHA256``), compiled in a temporary directory; only the extension module is copied next to the
source (ignored by git). ``gateway.wire.results`` uses the build only when its stamp matches the source as it is
now, so an edited loop never runs stale compiled code: it runs as Python until rebuilt. Needs gcc and the Python
headers (``make system-packages`` does not install them: every machine this project targets has them).

Run: python -m gateway.wire.native_build
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "row_runs.py"
NATIVE = "row_runs_native"


def source_digest(path: Path = SOURCE) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build() -> Path:
    """Compile and install the extension next to the source; returns its path."""
    mypyc = Path(sys.executable).with_name("mypyc")
    with tempfile.TemporaryDirectory(prefix="phigate-native-") as work:
        module = Path(work) / f"{NATIVE}.py"
        module.write_text(SOURCE.read_text() + f'\n\nSOURCE_SHA256 = "{source_digest()}"\n')
        env = {**os.environ, "MYPYC_OPT_LEVEL": "3"}
        subprocess.run([str(mypyc), module.name], cwd=work, check=True, stdout=subprocess.DEVNULL, env=env)
        (built,) = Path(work).glob(f"{NATIVE}.*.so")
        for old in HERE.glob(f"{NATIVE}.*.so"):
            old.unlink()
        target = HERE / built.name
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(built, partial)
        partial.replace(target)  # never a half-written module where the gateway imports it
    return target


if __name__ == "__main__":
    print(f"compiled {build().relative_to(HERE.parent.parent)}")
