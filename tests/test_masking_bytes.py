"""Masking on wire bytes gives exactly what the masks on decoded text gave (the relay's fast masks, PR h7).

The reference below is the relay's masking as it was before the masks learned to work on bytes, copied verbatim:
decode every value (UTF-8, malformed bytes replaced), mask the text, encode it, and encode the DataRow field by
field. The fast path must agree with it byte for byte on any value, mask, semantic type and format, or a
pseudonym would change between releases (joins across exports would break) or a mask would leak a character.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.pgwire.backend import DataRow, FieldDescription
from gateway.wire import results, row_runs
from gateway.wire.results import MaskedRow, mask_frame, mask_row
from policy.binary_text import binary_to_text
from policy.masking import (
    ColumnMask,
    MaskingPlan,
    frame_value,
    framed,
    framed_text_mask,
    hmac_sha256,
    mask_value,
    pseudonym,
    text_bytes_mask,
)
from policy.models import Mask, PhiType

# ------------------------------------------------------------------------------------------- the reference

_YEAR = re.compile(r"^(\d{4})-")


def _reference_pseudonym(value: str, phi_type: str, key: bytes) -> str:
    mac = hmac.new(key, f"{phi_type}\x00{value}".encode(), hashlib.sha256).hexdigest()
    return f"{phi_type}_{mac[:16]}"


def _reference_generalize(value: str, phi_type: str) -> str:
    if phi_type == PhiType.ZIP:
        digits = re.sub(r"[^0-9]", "", value)
        return digits[:3] + "00" if len(digits) >= 3 else "[redacted]"
    match = _YEAR.match(value)
    return match.group(1) if match else "[redacted]"


def _reference_mask_value(value: str | None, mask: str, phi_type: str, key: bytes) -> str | None:
    if value is None or mask == Mask.PASS:
        return value
    if mask == Mask.NULL:
        return None
    if mask == Mask.HASH:
        return _reference_pseudonym(value, phi_type, key)
    if mask == Mask.PARTIAL:
        tail = re.sub(r"[^0-9A-Za-z]", "", value)[-4:]
        return f"***{tail}" if len(tail) == 4 else "[redacted]"
    if mask == Mask.GENERALIZE:
        return _reference_generalize(value, phi_type)
    return "[redacted]"


def _reference_mask_row(row: DataRow, plan: MaskingPlan, fields: tuple[FieldDescription, ...], key: bytes) -> DataRow:
    values: list[bytes | None] = []
    for index, (value, spec) in enumerate(zip(row.values, plan.columns, strict=True)):
        if spec is None or value is None:
            values.append(value)
            continue
        field = fields[index] if index < len(fields) else None
        if field is not None and field.format == 1:
            text = binary_to_text(field.type_oid, value)
            masked = _reference_mask_value(text, spec.mask, spec.phi_type, key) if text is not None else "[redacted]"
        else:
            masked = _reference_mask_value(value.decode("utf-8", "replace"), spec.mask, spec.phi_type, key)
        values.append(None if masked is None else masked.encode("utf-8"))
    return DataRow(tuple(values))


# ------------------------------------------------------------------------------------------- strategies

MASKS = [*Mask.values, "something-new"]  # an unknown mask redacts
PHI_TYPES = [*PhiType.values, "zip", "birth_date"]
OIDS = [16, 20, 21, 23, 25, 1042, 1043, 19, 705, 1082, 1114, 1184, 2950, 700, 1700]  # with two it cannot decode

_interesting_text = st.sampled_from(
    [
        "2004-08-10",
        "١٢٣٤-05-06",  # digits of another script: a str pattern's \d matches them
        "62790-1234",
        "911-34-7419",
        "Zoë O'Brien",
        "MRN10459241",
        "",
        "12",
        "abc\u00e9\u00e9\u00e9\u00e91",
        "٣٤٥٦٧",
    ]
)
texts = st.one_of(st.text(max_size=40), _interesting_text)
raw_values = st.one_of(
    texts.map(lambda text: text.encode("utf-8")),
    st.binary(max_size=24),  # malformed UTF-8 too (a client_encoding other than UTF8, or binary format)
    st.sampled_from([b"\x00\x00\x1e\x0f", b"\x00\x00\x00\x00\x00\x00\x00\x01", b"\x01", b"\x00", b"\xff\xfe"]),
)
specs = st.one_of(
    st.none(),
    st.builds(ColumnMask, st.sampled_from(MASKS), st.sampled_from(PHI_TYPES), st.just("test")),
)


@st.composite
def result_rows(draw: st.DrawFn) -> tuple[DataRow, MaskingPlan, tuple[FieldDescription, ...]]:
    count = draw(st.integers(min_value=1, max_value=10))
    plan = MaskingPlan(tuple(draw(specs) for _ in range(count)))
    fields = tuple(
        FieldDescription(f"c{i}", 0, 0, draw(st.sampled_from(OIDS)), -1, -1, draw(st.sampled_from([0, 0, 1])))
        for i in range(draw(st.integers(min_value=0, max_value=count)))  # a description may be shorter
    )
    row = DataRow(tuple(draw(st.one_of(st.none(), raw_values)) for _ in range(count)))
    return row, plan, fields


KEY = b"k" * 32


# ------------------------------------------------------------------------------------------- the checks


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.none(), texts), st.sampled_from(MASKS), st.sampled_from(PHI_TYPES))
def test_mask_value_is_unchanged(value: str | None, mask: str, phi_type: str) -> None:
    assert mask_value(value, mask, phi_type, KEY) == _reference_mask_value(value, mask, phi_type, KEY)


@settings(max_examples=3000, deadline=None)
@given(raw_values, st.sampled_from(MASKS), st.sampled_from(PHI_TYPES))
@example(b"\xc3(1234", Mask.PARTIAL, "ssn")  # a malformed sequence beside ASCII digits
@example(b"\xd9\xa1\xd9\xa2\xd9\xa3\xd9\xa4-01", Mask.GENERALIZE, "birth_date")
@example(b"caf\xc3\xa9", Mask.HASH, "name")
@example(b"caf\xe9", Mask.HASH, "name")  # Latin-1, not UTF-8: hashed as the replaced text, as before
@example(b"caf\xe9", Mask.PASS, "name")
def test_bytes_masks_match_masking_the_decoded_text(raw: bytes, mask: str, phi_type: str) -> None:
    expected = _reference_mask_value(raw.decode("utf-8", "replace"), mask, phi_type, KEY)
    assert text_bytes_mask(mask, phi_type, KEY)(raw) == (None if expected is None else expected.encode("utf-8"))


@settings(max_examples=3000, deadline=None)
@given(raw_values, st.sampled_from(MASKS), st.sampled_from(PHI_TYPES))
@example(b"1984-03-12", Mask.GENERALIZE, "birth_date")
@example(b"1984-\xff\xfe", Mask.GENERALIZE, "birth_date")  # a year, then bytes that are not UTF-8
@example(b"\xd9\xa1\xd9\xa2\xd9\xa3\xd9\xa4-01", Mask.GENERALIZE, "birth_date")  # digits of another script
@example(b"1984", Mask.GENERALIZE, "birth_date")
@example(b"198a-03-12", Mask.GENERALIZE, "service_date")
@example(b"12", Mask.GENERALIZE, "zip")
@example(b"caf\xe9", Mask.HASH, "name")
@example(b"", Mask.PARTIAL, "ssn")
@example(b"123-45-6789", Mask.PARTIAL, "ssn")
@example(b"12\xc3\xa9456", Mask.PARTIAL, "phone")  # the last four bytes hold half a character
@example(b"(555) 555-12\xd9\xa3", Mask.PARTIAL, "phone")
@example(b"x", Mask.NULL, "ssn")
def test_framed_masks_frame_what_the_bytes_masks_give(raw: bytes, mask: str, phi_type: str) -> None:
    # The relay's per-column loop writes these straight into the row (issue 13): the value behind its length word.
    expected = frame_value(text_bytes_mask(mask, phi_type, KEY)(raw))
    assert framed_text_mask(mask, phi_type, KEY)(raw) == expected
    assert framed(text_bytes_mask(mask, phi_type, KEY))(raw) == expected


def test_a_framed_value_is_its_length_and_bytes() -> None:
    assert frame_value(None) == b"\xff\xff\xff\xff"
    assert frame_value(b"") == b"\x00\x00\x00\x00"
    assert frame_value(b"abc") == b"\x00\x00\x00\x03abc"


@settings(max_examples=3000, deadline=None)
@given(result_rows())
def test_masked_rows_are_byte_identical_to_the_reference(
    case: tuple[DataRow, MaskingPlan, tuple[FieldDescription, ...]],
) -> None:
    row, plan, fields = case
    key = results._pseudonym_key()
    expected = _reference_mask_row(row, plan, fields, key)
    got = mask_row(row, plan, fields)
    assert got.values == expected.values
    assert got.encode() == expected.encode()  # the frame built in one pass is the frame DataRow encodes
    assert got == expected and isinstance(got, DataRow)
    assert mask_frame(row.encode(), plan, fields) == expected.encode()


def test_pseudonyms_keep_their_published_form() -> None:
    # Pinned, so a change of the HMAC's construction cannot go unnoticed: exports keep joining across releases.
    assert pseudonym("Jane Doe", "name", KEY) == _reference_pseudonym("Jane Doe", "name", KEY)
    assert pseudonym("Jane Doe", "name", KEY) == "name_" + hmac.new(KEY, b"name\x00Jane Doe", "sha256").hexdigest()[:16]


def test_a_row_masker_is_worked_out_once_per_plan_and_description() -> None:
    plan = MaskingPlan((None, ColumnMask(Mask.HASH, "mrn", "test"), ColumnMask(Mask.REDACT, "note", "test")))
    fields = (FieldDescription("id", 1, 1, 23, 4, -1), FieldDescription("mrn", 1, 2, 25, -1, -1))
    first = results.row_masker(plan, fields)
    assert results.row_masker(plan, fields) is first
    same_plan_other_fields = (FieldDescription("id", 1, 1, 23, 4, -1), FieldDescription("mrn", 1, 2, 25, -1, -1, 1))
    assert results.row_masker(plan, same_plan_other_fields) is not first
    row = mask_row(DataRow((b"7", b"MRN1", b"secret")), plan, fields)
    assert isinstance(row, MaskedRow) and row.values[0] == b"7" and row.values[2] == b"[redacted]"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=100), st.binary(max_size=200))
@example(b"k" * 64, b"m")  # a key of exactly one block
@example(b"k" * 65, b"m")  # one byte more: hashed first
def test_the_precomputed_hmac_is_hmac(key: bytes, message: bytes) -> None:
    assert hmac_sha256(key)(message) == hmac.digest(key, message, "sha256")


@settings(max_examples=1000, deadline=None)
@given(result_rows(), st.integers(min_value=0, max_value=60), st.binary(max_size=6))
def test_a_malformed_frame_fails_as_decoding_it_does(
    case: tuple[DataRow, MaskingPlan, tuple[FieldDescription, ...]], cut: int, junk: bytes
) -> None:
    row, plan, fields = case
    whole = row.encode()
    for frame in (whole[: max(5, len(whole) - cut)], whole + junk, whole[:5] + b"\xff\xff" + whole[7:]):
        try:
            expected: bytes | type[Exception] = mask_row(DataRow.decode_body(frame[5:]), plan, fields).encode()
        except Exception as error:  # whatever the reference raises, the fast path raises too
            expected = type(error)
        try:
            got: bytes | type[Exception] = mask_frame(frame, plan, fields)
        except Exception as error:
            got = type(error)
        assert got == expected


@settings(max_examples=1000, deadline=None)
@given(result_rows(), st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=4), st.integers(0, 40))
def test_a_run_of_rows_is_masked_as_each_row_is(
    case: tuple[DataRow, MaskingPlan, tuple[FieldDescription, ...]], picks: list[int], cut: int
) -> None:
    # The relay masks the DataRows it has buffered in one call (issue 13), reading each in place: the same bytes
    # as frame by frame, or the same error, also when a row is malformed (its lengths must not read the next).
    row, plan, fields = case
    whole = row.encode()
    short = whole[:5] + whole[5 : max(7, len(whole) - cut)]  # a frame whose values run past its end
    variants = [whole, short, whole[:5] + b"\xff\xff" + whole[7:], whole]
    frames = [variants[pick] for pick in picks]
    masker = results.row_masker(plan, fields)
    ends = [sum(map(len, frames[: index + 1])) for index in range(len(frames))]
    try:
        expected: bytes | type[Exception] = b"".join(masker.mask_frame(frame) for frame in frames)
    except Exception as error:
        expected = type(error)
    try:
        got: bytes | type[Exception] = masker.mask_run(b"".join(frames), ends)
    except Exception as error:
        got = type(error)
    assert got == expected


def test_the_compiled_row_loop_is_the_one_in_use() -> None:
    """``make native`` (part of ``make venv`` and ``make test``) builds it from the source as it is."""
    assert results.NATIVE_ROW_LOOP, "gateway/wire/row_runs_native is missing or stale: run make native"
    assert results.mask_frames is not row_runs.mask_frames


@settings(max_examples=1000, deadline=None)
@given(result_rows(), st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=5), st.integers(0, 40))
@example(
    (DataRow((b"1", None)), MaskingPlan((None, ColumnMask(Mask.HASH, "mrn", "test"))), ()), [4], 0
)  # a length word past the end of the run
def test_the_compiled_loop_and_the_python_loop_agree(
    case: tuple[DataRow, MaskingPlan, tuple[FieldDescription, ...]], picks: list[int], cut: int
) -> None:
    """Frame for frame, the same output, the same stop at the first malformed frame, the same error."""
    row, plan, fields = case
    whole = row.encode()
    variants = [
        whole,
        whole[:5] + whole[5 : max(7, len(whole) - cut)],  # values that run past the frame's end
        whole[:5] + b"\xff\xff" + whole[7:],  # the wrong column count
        whole + b"\x00",  # a byte after the last value
        whole[:7] + b"\x7f\xff\xff\xff",  # a length word that points past the run
    ]
    frames = [variants[pick] for pick in picks]
    run = b"".join(frames)
    ends = [sum(map(len, frames[: index + 1])) for index in range(len(frames))]
    masks = results.row_masker(plan, fields).framed

    def outcome(loop: Any) -> tuple[int, list[bytes]] | type[Exception]:
        out: list[bytes] = []
        try:
            return loop(run, ends, 0, 0, masks, out), out
        except Exception as error:
            return type(error)

    assert outcome(results.mask_frames) == outcome(row_runs.mask_frames)
