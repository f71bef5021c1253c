"""The masked relay's innermost loop: consecutive DataRow frames, each column passed on or masked (issue 13).

Why a module of its own: it is the hottest loop of a masked read (about 9 columns x 10,000 rows, interpreted
bytecode per column), and it is plain typed Python with no import beyond the standard library, so ``make venv``
compiles it with mypyc (``build/row_runs.so``-style extension next to this file). The same source runs either
way; the byte-for-byte tests (tests/test_masking_bytes.py) run whichever is imported and the pure one, and
``COMPILED`` says which this is. A compiled build that fails leaves the pure module in use: nothing else changes.

The frames are read in place: a length word is decoded from the bytes (no ``struct`` call), bounds are checked
once per frame (positions only grow, so a frame is well formed exactly when its last value ends where the frame
ends; a length word past the end of the run stops the frame as malformed), and a frame that is not well formed
is left to the caller, which decodes it properly and says what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable

FramedMask = Callable[[bytes], bytes]  # a column's mask, returning its output behind its length word

_NULL_LENGTH = b"\xff\xff\xff\xff"
_MAX_BODY = 0x7FFFFFFF - 4


def mask_frames(
    run: bytes,
    ends: list[int],
    first: int,
    start: int,
    masks: tuple[FramedMask | None, ...],
    out: list[bytes],
) -> int:
    """Mask the frames ``run[start:ends[first]]``, ``run[ends[first]:ends[first + 1]]``... appending each masked
    frame to ``out``, up to the first frame that is not well formed: returns its index in ``ends`` (its start is
    ``ends[index - 1]``, or ``start`` for ``first``), or ``len(ends)`` when every frame was masked."""
    count = len(masks)
    size = len(run)
    index = first
    total = len(ends)
    while index < total:
        stop = ends[index]
        if start + 7 > size or ((run[start + 5] << 8) | run[start + 6]) != count:
            return index
        parts: list[bytes] = [run[start + 5 : start + 7]]
        pos = start + 7
        well_formed = True
        for mask in masks:
            if pos + 4 > size:
                well_formed = False
                break
            length = (run[pos] << 24) | (run[pos + 1] << 16) | (run[pos + 2] << 8) | run[pos + 3]
            if length >= 0x80000000:
                if length != 0xFFFFFFFF:  # -1 is NULL; any other negative length is malformed
                    well_formed = False
                    break
                parts.append(_NULL_LENGTH)
                pos += 4
                continue
            end = pos + 4 + length
            if end > size:
                well_formed = False
                break
            if mask is None:
                parts.append(run[pos:end])  # as it came, length word included
            else:
                parts.append(mask(run[pos + 4 : end]))
            pos = end
        if not well_formed or pos != stop:
            return index
        body = b"".join(parts)
        if len(body) > _MAX_BODY:
            raise ValueError(f"DataRow of {len(body) + 4} bytes is too large to frame")
        out.append(b"D" + (len(body) + 4).to_bytes(4, "big") + body)
        start = stop
        index += 1
    return index


def compiled() -> bool:
    """Whether this module is the mypyc build (a compiled module's functions are not Python functions)."""
    return not hasattr(mask_frames, "__code__")
