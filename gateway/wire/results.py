"""Result rows and descriptions as the client sees them: masked per the statement's decision.

Sans-IO and shared by the relay task and the fast path of ``gateway.wire.session``: a RowDescription frame is
turned into a ``ResultShape`` once per decision (memoised on the decision), and each DataRow is masked with its
plan. A column whose origin the policy cannot place is redacted (``_plan_for``: unknown provenance fails closed).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

from audit.events import json_members, masking_details
from gateway.pgwire import primitives as wire
from gateway.pgwire.backend import DataRow, FieldDescription, RowDescription
from gateway.pipeline import Decision
from gateway.wire import native_build, row_runs
from policy.binary_text import binary_to_text
from policy.lineage_masking import plan_for_result
from policy.masking import (
    REDACTED,
    BytesMask,
    ColumnMask,
    FramedMask,
    MaskingPlan,
    framed,
    framed_text_mask,
    mask_value,
    text_bytes_mask,
)
from policy.patient_keys import KeysSeen, PatientAccess, patient_access, require_patient_key, tables_read

TEXT_OID = 25
log = logging.getLogger(__name__)


def _hot_loop() -> tuple[Callable[..., int], bool]:
    """The row loop compiled by ``make native`` (gateway.wire.native_build) when it was built from the source as
    it is now; else the same loop as Python. Returns it and whether it is the compiled one."""
    try:
        from gateway.wire import row_runs_native  # type: ignore[attr-defined]
    except ImportError:
        return row_runs.mask_frames, False
    if getattr(row_runs_native, "SOURCE_SHA256", "") != native_build.source_digest():
        log.warning("gateway/wire/row_runs_native is older than row_runs.py; the Python loop runs (make native)")
        return row_runs.mask_frames, False
    return row_runs_native.mask_frames, True


mask_frames, NATIVE_ROW_LOOP = _hot_loop()
MAX_INT32 = wire.MAX_INT32
_INT32_PACK = wire.INT32.pack
_UINT16_PACK = wire.UINT16.pack
_UINT16_UNPACK = wire.UINT16.unpack_from
_INT32_UNPACK = wire.INT32.unpack_from
_NULL_LENGTH = wire.NULL_LENGTH
_HEADER_PACK = struct.Struct("!ci").pack  # a frame's type byte and length word
_REDACTED = REDACTED.encode()


@dataclass(frozen=True)
class ResultShape:
    """A result description under one decision: worked out once, reused while the decision is cached."""

    source: RowDescription  # as the upstream sent it
    plan: MaskingPlan | None
    description: bytes  # the RowDescription the client is sent (masked columns announced as text), encoded
    fields: tuple[FieldDescription, ...]  # as the upstream described them (formats and types of the values)
    masking: dict[str, dict[str, str]]  # for the audit record
    columns: list[str]
    masking_json: str  # the audit details' masking fields, serialized (without the braces)


def masking_text(masking: dict[str, dict[str, str]]) -> str:
    """A result's masking as the fields of its audit details (audit.events.masking_details), braces left off."""
    return json_members(masking_details(masking))


def result_shape(frame: bytes, decision: Decision | None, identity_kind: str) -> ResultShape:
    """The shape of a RowDescription frame (keyed by its exact bytes, so a repeat is not even decoded)."""
    key = ("result", identity_kind, frame)
    memo = decision.wire_memo if decision is not None else {}
    shape = memo.get(key)
    if shape is None:
        description = RowDescription.decode_body(frame[5:])
        plan = _plan_for(description, decision, identity_kind)
        names = [f.name for f in description.fields]
        masking = plan.describe(names) if plan else {}
        shape = ResultShape(
            source=description,
            plan=plan,
            description=_rewrite_description(description, plan).encode(),
            fields=description.fields,
            masking=masking,
            columns=names,
            masking_json=masking_text(masking),
        )
        if len(memo) < 64:
            memo[key] = shape
    return shape


def _plan_for(description: RowDescription, decision: Decision | None, identity_kind: str) -> MaskingPlan | None:
    if not description.fields:
        return None
    if decision is None or decision.classification is None or decision.catalog is None:
        # Unknown provenance: fail closed, every column redacted.
        return MaskingPlan(
            tuple(ColumnMask("redact", "unknown", "statement unknown to the gateway") for _ in description.fields)
        )
    origins = [(field.table_oid, field.column_attnum) for field in description.fields]
    return plan_for_result(origins, decision.classification, decision.lineage, decision.catalog, identity_kind)


def _rewrite_description(description: RowDescription, plan: MaskingPlan | None) -> RowDescription:
    """Masked columns are announced as text: a mask's output (``***1234``, a pseudonym) is text, in either format."""
    if plan is None or plan.is_identity:
        return description
    fields = tuple(
        field if spec is None else FieldDescription(field.name, 0, 0, TEXT_OID, -1, -1, field.format)
        for field, spec in zip(description.fields, plan.columns, strict=True)
    )
    return RowDescription(fields)


_KEY: bytes | None = None


def _pseudonym_key() -> bytes:
    global _KEY
    if _KEY is None:
        from policy.masking import require_pseudonym_key

        _KEY = require_pseudonym_key()
    return _KEY


def _binary_bytes_mask(type_oid: int, spec: ColumnMask, key: bytes) -> BytesMask:
    """A value in binary format is masked through its text form; a type without one is redacted (fail closed)."""
    mask, phi_type = spec.mask, spec.phi_type

    def masked(raw: bytes) -> bytes | None:
        text = binary_to_text(type_oid, raw)
        if text is None:
            return _REDACTED
        value = mask_value(text, mask, phi_type, key)
        return None if value is None else value.encode("utf-8")

    return masked


class RowMasker:
    """A plan applied to one result's rows, worked out once: one function per masked column (by mask and format),
    None for the columns that pass as they came (their bytes are never decoded)."""

    __slots__ = ("framed", "masks")

    def __init__(self, plan: MaskingPlan, fields: tuple[FieldDescription, ...], key: bytes) -> None:
        masks: list[BytesMask | None] = []
        framed_masks: list[FramedMask | None] = []  # the same masks, framing their output (for ``mask_frame``)
        for index, spec in enumerate(plan.columns):
            if spec is None:
                masks.append(None)
                framed_masks.append(None)
            elif index < len(fields) and fields[index].format == 1:
                binary = _binary_bytes_mask(fields[index].type_oid, spec, key)
                masks.append(binary)
                framed_masks.append(framed(binary))
            else:
                masks.append(text_bytes_mask(spec.mask, spec.phi_type, key))
                framed_masks.append(framed_text_mask(spec.mask, spec.phi_type, key))
        self.masks = tuple(masks)
        self.framed = tuple(framed_masks)

    def mask(self, values: tuple[bytes | None, ...]) -> tuple[tuple[bytes | None, ...], bytes]:
        """The masked values and the complete DataRow frame that carries them, built in one pass."""
        masks = self.masks
        if len(values) != len(masks):
            raise ValueError(f"a row of {len(values)} values under a plan for {len(masks)} columns")
        masked: list[bytes | None] = []
        keep = masked.append
        parts: list[bytes] = [b"", _UINT16_PACK(len(values))]
        add = parts.append
        size = 6  # the length word and the column count
        for value, mask in zip(values, masks):  # noqa: B905 - lengths checked above
            if value is not None and mask is not None:
                value = mask(value)
            keep(value)
            if value is None:
                add(_NULL_LENGTH)
                size += 4
            else:
                add(_INT32_PACK(len(value)))
                add(value)
                size += 4 + len(value)
        if size > MAX_INT32:
            raise ValueError(f"DataRow of {size} bytes is too large to frame")
        parts[0] = b"D" + _INT32_PACK(size)
        return tuple(masked), b"".join(parts)

    def mask_frame(self, frame: bytes) -> bytes:
        """A whole DataRow frame (as the upstream sent it) masked straight to the frame the client is sent, in one
        pass: no DataRow in between. Anything malformed goes through ``DataRow.decode_body``, which says what."""
        return self.mask_run(frame, [len(frame)])

    def mask_run(self, run: bytes, ends: list[int]) -> bytes:
        """Consecutive DataRow frames, ``run[0:ends[0]]``, ``run[ends[0]:ends[1]]`` and so on (as
        ``BackendParser.take_run`` gives them), masked and joined: what ``mask_frame`` gives each, in order.

        The hottest loop of a masked read (issue 13) is ``gateway.wire.row_runs.mask_frames``, compiled when
        built (``NATIVE_ROW_LOOP``): each frame read in place, its bounds checked once. A frame that is not well
        formed goes through ``DataRow.decode_body`` here, which raises what is wrong; the work done on it is
        dropped (a mask may have seen bytes of the next frame, never sent)."""
        masked: list[bytes] = []
        index, total = 0, len(ends)
        while (index := mask_frames(run, ends, index, ends[index - 1] if index else 0, self.framed, masked)) < total:
            start = ends[index - 1] if index else 0
            masked.append(self._mask_decoded(run[start : ends[index]]))  # raises what is wrong with the frame
            index += 1
        return b"".join(masked)

    def _mask_decoded(self, frame: bytes) -> bytes:
        return self.mask(DataRow.decode_body(frame[5:]).values)[1]  # raises what is wrong with the frame


class MaskedRow(DataRow):
    """A masked DataRow that carries its encoded frame (built with the values): ``encode`` costs nothing."""

    __slots__ = ("frame",)
    frame: bytes

    def encode(self) -> bytes:
        return self.frame

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DataRow):
            return self.values == other.values
        return NotImplemented

    __hash__ = DataRow.__hash__


# Row maskers by the identity of (plan, fields): the relay passes the same two objects for every row of a result.
# Each entry holds its plan and fields, so an id cannot be reused while its entry lives.
_MASKERS: dict[tuple[int, int], tuple[MaskingPlan, tuple[FieldDescription, ...], RowMasker]] = {}
_MAX_MASKERS = 512


def row_masker(plan: MaskingPlan, fields: tuple[FieldDescription, ...]) -> RowMasker:
    entry = _MASKERS.get((id(plan), id(fields)))
    if entry is not None and entry[0] is plan and entry[1] is fields:
        return entry[2]
    masker = RowMasker(plan, fields, _pseudonym_key())
    if len(_MASKERS) >= _MAX_MASKERS:
        _MASKERS.clear()
    _MASKERS[(id(plan), id(fields))] = (plan, fields, masker)
    return masker


def mask_row(row: DataRow, plan: MaskingPlan, fields: tuple[FieldDescription, ...]) -> DataRow:
    """The row as the client may see it under ``plan`` (``fields``: the upstream's description of the values)."""
    values, frame = row_masker(plan, fields).mask(row.values)
    masked = MaskedRow(values)
    object.__setattr__(masked, "frame", frame)
    return masked


def mask_frame(frame: bytes, plan: MaskingPlan, fields: tuple[FieldDescription, ...]) -> bytes:
    """A DataRow frame masked straight to the frame the client is sent (for a relay that needs no DataRow):
    the same bytes as ``mask_row(DataRow.decode_body(frame[5:]), plan, fields).encode()``, at about half the cost."""
    return row_masker(plan, fields).mask_frame(frame)


# ------------------------------------------------------------------------------------ accounting of disclosures


class PatientReads:
    """The patient keys one statement's rows carried, read from the DataRow frames as the upstream sent them
    (before masking: the agent may see them masked), for the statement's outcome record (policy.patient_keys).

    Made only for a result whose plan has a patient-key column (``of``), so a result without one costs the relay
    nothing but a None test per run of rows. Each row is read in place up to its last key column: no copy, no
    decoding of the other values. A simple Query's later results (``SELECT 1; SELECT id FROM patients``) carry on
    in the same object (``next_result``): one statement, one record."""

    __slots__ = ("columns", "key_columns", "seen")

    def __init__(self) -> None:
        self.seen = KeysSeen()
        self.key_columns: dict[str, str] = {}  # output column name -> key name, over every result
        self.columns: tuple[tuple[int, str, int], ...] = ()  # this result's (index, key name, binary type or 0)

    @classmethod
    def of(cls, plan: MaskingPlan | None, fields: tuple[FieldDescription, ...]) -> PatientReads | None:
        """A reader for a result under ``plan``, or None when the result has no patient-key column."""
        if plan is None or not plan.patient_keys:
            return None
        reads = cls()
        reads.start(plan, fields)
        return reads

    def start(self, plan: MaskingPlan | None, fields: tuple[FieldDescription, ...]) -> None:
        """Read the key columns of a new result (none, if its plan has none)."""
        keys = plan.patient_keys if plan is not None else ()
        columns = []
        for index, key_name in keys:
            if index >= len(fields):
                continue
            field = fields[index]
            columns.append((index, key_name, field.type_oid if field.format == 1 else 0))
            self.key_columns[field.name] = key_name
        self.columns = tuple(columns)

    def add_frame(self, frame: bytes) -> None:
        self.add_run(frame, [len(frame)])

    def add_run(self, run: bytes, ends: list[int]) -> None:
        """The keys of consecutive DataRow frames (``RowMasker.mask_run``'s input). A malformed frame is skipped:
        the masker, or the client's own parser, reports it."""
        columns = self.columns
        if not columns:
            return
        add = self.seen.add
        start = 0
        for stop in ends:
            pos = start + 7
            column = 0
            try:
                for index, key_name, binary_type in columns:
                    while column < index:
                        (length,) = _INT32_UNPACK(run, pos)
                        pos += 4 + (length if length > 0 else 0)
                        column += 1
                    (length,) = _INT32_UNPACK(run, pos)
                    end = pos + 4 + length
                    if length >= 0 and end <= stop:
                        if binary_type:
                            self._add_binary(key_name, binary_type, run[pos + 4 : end])
                        else:
                            add(key_name, run[pos + 4 : end])
                    pos = end if length > 0 else pos + 4
                    column += 1
            except struct.error:
                pass
            start = stop

    def _add_binary(self, key_name: str, type_oid: int, raw: bytes) -> None:
        """A key in binary format, by its text form (one patient, one pseudonym, in every format)."""
        text = binary_to_text(type_oid, raw)
        if text is None:
            self.seen.truncated = True  # a type the gateway cannot read as text: say the list is incomplete
        else:
            self.seen.add(key_name, text.encode("utf-8"))


_PATIENT_KEY: bytes | None = None


def _patient_key() -> bytes:
    global _PATIENT_KEY
    if _PATIENT_KEY is None:
        _PATIENT_KEY = require_patient_key()
    return _PATIENT_KEY


def result_patients(
    decision: Decision | None, reads: PatientReads | None, rowcount: int, datasource: str
) -> PatientAccess | None:
    """What a statement's rows disclosed about patients, for its outcome record (audit.events.executed): the
    pseudonyms of the keys ``reads`` collected, or the patient tables read when the result had no key column."""
    if rowcount <= 0 or decision is None or decision.catalog is None or not decision.catalog.patient_keys:
        return None
    memo = decision.wire_memo
    tables = memo.get("patient tables")
    if tables is None:
        tables = memo["patient tables"] = tables_read(decision.classification, decision.lineage, decision.catalog)
    return patient_access(
        datasource=datasource,
        tables=tables,
        key_columns=reads.key_columns if reads is not None else {},
        seen=reads.seen if reads is not None else None,
        rowcount=rowcount,
        key=_patient_key(),
    )
