"""Cost per row of masking a wide PHI result the way the gateway's relay does (issue 13).

Frames 10,000 DataRows shaped like the demo clinic's ``patients`` (nine text columns, eight of them PHI under the
agent's default masks: two pseudonyms, two partial masks, a year, a ZIP prefix, two redactions), feeds them to a
BackendParser in socket-sized chunks and times the two halves of the relay separately: framing (the parser) and
masking (``gateway.wire.results``' row masker, with the result's masker held, as the relay holds it). Not a test;
it exists so a change to the hot loop can be judged without a database, and without the noise of one.

Run: .venv/bin/python bench/masked_rows.py [rows] [repeats]
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "phigate.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-not-a-secret-" + "x" * 20)
os.environ.setdefault("DATABASE_URL", "postgresql://bench@127.0.0.1/unused")  # no query is made

import django

django.setup()

from gateway.pgwire import BackendParser, DataRow, FieldDescription  # noqa: E402
from gateway.wire.results import RowMasker  # noqa: E402
from policy.masking import ColumnMask, MaskingPlan  # noqa: E402

KEY = b"bench-pseudonym-key-" + b"k" * 20
CHUNK = 64 * 1024
COLUMNS = (
    ("id", None),
    ("mrn", ("hash", "mrn")),
    ("full_name", ("hash", "name")),
    ("date_of_birth", ("generalize", "birth_date")),
    ("ssn", ("partial", "ssn")),
    ("phone", ("partial", "phone")),
    ("email", ("redact", "email")),
    ("address", ("redact", "address")),
    ("zip", ("generalize", "zip")),
)


def patient_rows(count: int, seed: int = 13) -> list[bytes]:
    """Encoded DataRow frames with values like the demo clinic's (unique names and numbers, ASCII)."""
    rng = random.Random(seed)
    frames = []
    for number in range(1, count + 1):
        values = (
            str(number),
            f"MRN{number:07d}",
            f"{rng.choice(['Ana', 'Bo', 'Chidi', 'Dana'])} {rng.choice(['Lee', 'Okafor', 'Smith'])}-{number}",
            f"19{rng.randrange(30, 99)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
            f"{rng.randrange(100, 999)}-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}",
            f"({rng.randrange(200, 999)}) 555-{rng.randrange(0, 9999):04d}",
            f"patient{number}@example.org",
            f"{rng.randrange(1, 9999)} Main St",
            f"{rng.randrange(10000, 99999)}",
        )
        frames.append(DataRow(tuple(value.encode() for value in values)).encode())
    return frames


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    frames = patient_rows(rows)
    stream = b"".join(frames)
    fields = tuple(FieldDescription(name, 16384, i + 1, 25, -1, -1, 0) for i, (name, _) in enumerate(COLUMNS))
    plan = MaskingPlan(tuple(None if spec is None else ColumnMask(spec[0], spec[1], "bench") for _, spec in COLUMNS))
    masker = RowMasker(plan, fields, KEY)
    parse_times, mask_times = [], []
    for _ in range(repeats):
        parser = BackendParser()
        started = time.perf_counter()
        parsed = []
        for offset in range(0, len(stream), CHUNK):
            parser.feed(stream[offset : offset + CHUNK])
            while (framed := parser.next_frame()) is not None:
                parsed.append(framed[1])
        parse_times.append(time.perf_counter() - started)
        assert parsed == frames
        mask = masker.mask_frame
        started = time.perf_counter()
        for frame in frames:
            mask(frame)
        mask_times.append(time.perf_counter() - started)
    for name, times in (("frame (parser)", parse_times), ("mask (row masker)", mask_times)):
        median = statistics.median(times)
        print(f"{name}: {median * 1e3:.1f} ms for {rows:,} rows, {median / rows * 1e6:.2f} µs a row (median)")


if __name__ == "__main__":
    main()
