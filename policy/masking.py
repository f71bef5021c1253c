"""Masking values in results, and the v1 plan that decides which output column gets which mask.

Values arrive as PostgreSQL's own text output (see policy.target_catalog.text_only_adapters), so a mask works on
exactly what would otherwise reach the agent. The v1 plan is column-level and fails closed:

* a column whose origin PostgreSQL reports (RowDescription table OID + attribute number) is masked by the rule
  for its tag's semantic type and the viewer's kind of identity (policy.defaults, overridable per data source);
* a column whose origin is a view, materialized view or unknown relation is redacted (lineage unknown);
* a computed column (no origin) is redacted when the statement touches a PHI-tagged or non-table relation,
  or calls a function outside pg_catalog (which could read PHI out of sight).

The lineage engine (issue 3) will replace the plan; the masks themselves stay.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from binascii import hexlify
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from policy.models import Mask, PhiType

REDACTED = "[redacted]"
_YEAR = re.compile(r"^(\d{4})-")
_NOT_ALNUM = re.compile(r"[^0-9A-Za-z]")
_NOT_DIGIT = re.compile(r"[^0-9]")


def require_pseudonym_key() -> bytes:
    key = settings.PSEUDONYM_KEY
    if not key or len(key) < 32:
        raise ImproperlyConfigured("PSEUDONYM_KEY (or PSEUDONYM_KEY_FILE) must be set to at least 32 characters")
    return key.encode("utf-8")


def pseudonym(value: str, phi_type: str, key: bytes) -> str:
    """Stable for a given key and type, so equal values still join and group; useless without the key."""
    mac = hmac.digest(key, f"{phi_type}\x00{value}".encode(), "sha256")  # one C call: no HMAC object
    return f"{phi_type}_{mac[:8].hex()}"


def mask_value(value: str | None, mask: str, phi_type: str, key: bytes) -> str | None:
    if value is None or mask == Mask.PASS:
        return value
    if mask == Mask.NULL:
        return None
    if mask == Mask.HASH:
        return pseudonym(value, phi_type, key)
    if mask == Mask.PARTIAL:
        tail = _NOT_ALNUM.sub("", value)[-4:]
        return f"***{tail}" if len(tail) == 4 else REDACTED
    if mask == Mask.GENERALIZE:
        return _generalize(value, phi_type)
    return REDACTED


def _generalize(value: str, phi_type: str) -> str:
    """Dates to their year; ZIP codes to their first three digits (the HIPAA Safe Harbor forms)."""
    if phi_type == PhiType.ZIP:
        digits = _NOT_DIGIT.sub("", value)
        return digits[:3] + "00" if len(digits) >= 3 else REDACTED
    match = _YEAR.match(value)
    return match.group(1) if match else REDACTED


# ------------------------------------------------------------------------------------------ masks on wire bytes
# The relay masks values as PostgreSQL sent them (text format: bytes that are normally UTF-8). These functions
# give exactly ``mask_value(raw.decode("utf-8", "replace"), ...).encode()`` (tests/test_masking_bytes.py checks
# them against it on random input) without decoding what a mask does not need: the redacted constant ignores the
# value, partial masks and ZIP codes keep ASCII characters only (which a decode never changes), and a pseudonym
# hashes the bytes themselves when they are ASCII.

BytesMask = Callable[[bytes], bytes | None]
_REDACTED_BYTES = REDACTED.encode()
_DIGITS = b"0123456789"
_ALNUM = _DIGITS + b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Tables that turn every byte to drop into NUL, removed afterwards: much cheaper than ``translate(None, drop)``,
# which builds its table from a 246-byte argument on every call. (A NUL byte is dropped anyway.)
_ALNUM_OR_NUL = bytes(byte if byte in _ALNUM else 0 for byte in range(256))
_DIGIT_OR_NUL = bytes(byte if byte in _DIGITS else 0 for byte in range(256))
_YEAR_BYTES = re.compile(rb"([0-9]{4})-")


try:  # CPython's own SHA-256: copying its state is a memcpy, a third cheaper a pseudonym than OpenSSL's context
    from _sha256 import sha256 as _sha256  # type: ignore[import-not-found,unused-ignore]  # CPython <= 3.11
except ImportError:  # pragma: no cover - the interpreter decides
    try:
        from _sha2 import sha256 as _sha256  # type: ignore[import-not-found,no-redef,unused-ignore]  # 3.12 on
    except ImportError:
        _sha256 = hashlib.sha256  # type: ignore[assignment,unused-ignore]

_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))


def _hmac_states(key: bytes, prefix: bytes) -> tuple[Any, Any]:
    """The inner and outer sha256 states of an HMAC keyed with ``key``, the inner one fed ``prefix`` (RFC 2104)."""
    if len(key) > 64:  # sha256's block size: a longer key is hashed first
        key = hashlib.sha256(key).digest()
    block = key.ljust(64, b"\0")
    inner, outer = _sha256(block.translate(_IPAD)), _sha256(block.translate(_OPAD))
    inner.update(prefix)
    return inner, outer


def hmac_sha256(key: bytes, prefix: bytes = b"") -> Callable[[bytes], bytes]:
    """``hmac.digest(key, prefix + message, "sha256")`` with the key's padded states, and the message's constant
    ``prefix``, hashed once (RFC 2104): each message then costs two copies of a hash state, a third of a fresh
    HMAC's set-up."""
    inner, outer = _hmac_states(key, prefix)

    def mac(message: bytes) -> bytes:
        state = inner.copy()
        state.update(message)
        result = outer.copy()
        result.update(state.digest())
        return result.digest()

    return mac


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def text_bytes_mask(mask: str, phi_type: str, key: bytes) -> BytesMask:
    """``mask_value`` for a non-NULL value in text format, bytes in and bytes (or None for NULL) out."""
    if mask == Mask.PASS:
        return lambda raw: raw if raw.isascii() else _text(raw).encode()
    if mask == Mask.NULL:
        return lambda raw: None
    if mask == Mask.HASH:
        prefix = f"{phi_type}_".encode()
        mac = hmac_sha256(key, prefix=f"{phi_type}\x00".encode())  # the type salts the pseudonym

        def hashed(raw: bytes) -> bytes:
            return prefix + hexlify(mac(raw if raw.isascii() else _text(raw).encode())[:8])

        return hashed
    if mask == Mask.PARTIAL:

        def partial(raw: bytes) -> bytes:
            # Bytes of a multi-byte character (or of a malformed sequence) are all >= 0x80: dropped, as the
            # characters they decode to are.
            tail = raw.translate(_ALNUM_OR_NUL).replace(b"\0", b"")[-4:]
            return b"***" + tail if len(tail) == 4 else _REDACTED_BYTES

        return partial
    if mask == Mask.GENERALIZE:
        if phi_type == PhiType.ZIP:

            def zip_code(raw: bytes) -> bytes:
                digits = raw if raw.isdigit() else raw.translate(_DIGIT_OR_NUL).replace(b"\0", b"")
                return digits[:3] + b"00" if len(digits) >= 3 else _REDACTED_BYTES

            return zip_code

        def year(raw: bytes) -> bytes:
            if not raw.isascii():  # ``\d`` in a str pattern matches digits of every script
                return _generalize(_text(raw), phi_type).encode()
            match = _YEAR_BYTES.match(raw)
            return match.group(1) if match else _REDACTED_BYTES

        return year
    return lambda raw: _REDACTED_BYTES


# ------------------------------------------------------------------------------------------ masks that frame
# The relay writes each masked value behind its Int32 length word (or writes the NULL length alone). Most masks
# have outputs of a fixed length (a pseudonym, ``***1234``, a year, a ZIP prefix, the redacted constant), so their
# length word can be part of a constant: one concatenation per value instead of a None test, a ``pack`` and two
# appends in the relay's per-column loop, which is the hottest loop in a masked read (issue 13). Each gives
# exactly ``frame_value(text_bytes_mask(mask, phi_type, key)(raw))`` (tests/test_masking_bytes.py checks it).

FramedMask = Callable[[bytes], bytes]
_INT32 = struct.Struct("!i")
NULL_LENGTH = _INT32.pack(-1)


def frame_value(value: bytes | None) -> bytes:
    """A value as a DataRow carries it: Int32 length and bytes, or the length -1 alone for NULL."""
    return NULL_LENGTH if value is None else _INT32.pack(len(value)) + value


def framed(mask: BytesMask) -> FramedMask:
    """Any bytes mask, framing its output (the general case: masks without a framed form of their own)."""
    return lambda raw: frame_value(mask(raw))


def framed_text_mask(mask: str, phi_type: str, key: bytes) -> FramedMask:
    """``text_bytes_mask``, with the output framed for the relay (see above)."""
    framed_redacted = frame_value(_REDACTED_BYTES)
    if mask == Mask.HASH:
        prefix = frame_value(f"{phi_type}_".encode() + b"0" * 16)[:-16]  # length word and type: the hex follows
        inner, outer = _hmac_states(key, f"{phi_type}\x00".encode())  # hmac_sha256, inlined: a call less a value

        def hashed(raw: bytes) -> bytes:
            state = inner.copy()
            state.update(raw if raw.isascii() else _text(raw).encode())
            result = outer.copy()
            result.update(state.digest())
            return prefix + hexlify(result.digest()[:8])

        return hashed
    if mask == Mask.PARTIAL:
        kept = frame_value(b"***0000")[:-4]

        def partial(raw: bytes) -> bytes:
            tail = raw[-4:]
            if len(tail) == 4 and tail.isalnum():  # ``bytes.isalnum``: ASCII only, so these are the last four kept
                return kept + tail
            tail = raw.translate(_ALNUM_OR_NUL).replace(b"\0", b"")[-4:]
            return kept + tail if len(tail) == 4 else framed_redacted

        return partial
    if mask == Mask.GENERALIZE:
        if phi_type == PhiType.ZIP:
            zip_prefix = frame_value(b"00000")[:-5]

            def zip_code(raw: bytes) -> bytes:
                digits = raw if raw.isdigit() else raw.translate(_DIGIT_OR_NUL).replace(b"\0", b"")
                return zip_prefix + digits[:3] + b"00" if len(digits) >= 3 else framed_redacted

            return zip_code
        year_length = frame_value(b"0000")[:-4]
        slow_year = text_bytes_mask(mask, phi_type, key)

        def year(raw: bytes) -> bytes:
            # Four ASCII digits and a hyphen first: what the year pattern matches, whatever follows (the bytes
            # after them cannot change how the first five decode). Anything else takes the general form.
            if raw[4:5] == b"-" and raw[:4].isdigit():
                return year_length + raw[:4]
            return framed_redacted if raw.isascii() else frame_value(slow_year(raw))

        return year
    if mask not in (Mask.PASS, Mask.NULL):
        return lambda raw: framed_redacted
    return framed(text_bytes_mask(mask, phi_type, key))


@dataclass(frozen=True)
class ColumnMask:
    mask: str
    phi_type: str
    why: str


@dataclass(frozen=True)
class MaskingPlan:
    """One entry per output column: None passes the value, a ColumnMask transforms it."""

    columns: tuple[ColumnMask | None, ...]
    # Not a mask: the output columns that are unmodified patient keys, as (index, key name), whose raw values
    # the fronts collect before masking for the accounting of disclosures (policy.patient_keys). On the plan
    # because the plan is what every front already has for each result (the wire relay per row, HTTP per read).
    patient_keys: tuple[tuple[int, str], ...] = ()

    @property
    def is_identity(self) -> bool:
        return all(column is None for column in self.columns)

    def apply(self, rows: Sequence[Sequence[str | None]], key: bytes) -> list[list[str | None]]:
        if self.is_identity:
            return [list(row) for row in rows]
        masks = self.columns
        return [
            [
                value if spec is None else mask_value(value, spec.mask, spec.phi_type, key)
                for value, spec in zip(row, masks, strict=True)
            ]
            for row in rows
        ]

    def describe(self, column_names: Sequence[str]) -> dict[str, dict[str, str]]:
        """For the audit record: which column got which mask and why (no values)."""
        return {
            name: {"mask": spec.mask, "phi_type": spec.phi_type, "why": spec.why}
            for name, spec in zip(column_names, self.columns, strict=True)
            if spec is not None
        }
