"""Bind parameters of a held statement, kept exactly as the client sent them.

An approved statement runs byte-identical to what was approved: for a parameterised statement (extended query
protocol) that means the SQL text *and* each parameter's bytes, format and declared type. The digest covers all
of them, so a changed parameter is as much a different statement as a changed SQL text.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg.postgres
from psycopg import adapters, pq

from policy.binary_text import binary_to_text


@dataclass(frozen=True)
class StatementParams:
    values: tuple[bytes | None, ...]
    formats: tuple[int, ...]  # one per value: 0 text, 1 binary
    type_oids: tuple[int, ...]  # one per value, 0 = let the server infer

    @classmethod
    def from_bind(
        cls, values: tuple[bytes | None, ...], formats: tuple[int, ...], type_oids: tuple[int, ...]
    ) -> StatementParams:
        """Normalise the protocol's shorthand: zero format codes = all text, one = applies to all."""
        count = len(values)
        if not formats:
            per_value = (0,) * count
        elif len(formats) == 1:
            per_value = formats * count
        else:
            per_value = formats
        oids = tuple(type_oids[i] if i < len(type_oids) else 0 for i in range(count))
        return cls(values=values, formats=tuple(per_value), type_oids=oids)

    def to_json(self) -> list[dict[str, object]]:
        return [
            {"value": None if v is None else base64.b64encode(v).decode(), "format": f, "type": t}
            for v, f, t in zip(self.values, self.formats, self.type_oids, strict=True)
        ]

    @classmethod
    def from_json(cls, items: list[dict[str, object]]) -> StatementParams:
        return cls(
            values=tuple(None if i["value"] is None else base64.b64decode(str(i["value"])) for i in items),
            formats=tuple(int(str(i["format"])) for i in items),
            type_oids=tuple(int(str(i["type"])) for i in items),
        )

    def for_audit(self) -> list[str | None]:
        """Human-readable values for the audit record: text as sent; binary decoded when the type is known,
        else shown as hex (the exact bytes are kept in the ticket either way)."""
        readable: list[str | None] = []
        for value, fmt, oid in zip(self.values, self.formats, self.type_oids, strict=True):
            if value is None:
                readable.append(None)
            elif fmt == 0:
                readable.append(value.decode("utf-8", "replace"))
            else:
                readable.append(binary_to_text(oid, value) or "\\x" + value.hex())
        return readable


@dataclass(frozen=True)
class ShownParam:
    """One parameter as a reviewer sees it: position, type, the value decoded, and for a binary value (or text
    that is not valid UTF-8) the exact bytes in hex, since the decoded form is only a reading of them."""

    position: int  # $1 is 1
    type_name: str
    type_oid: int  # the declared type, or the one PostgreSQL resolved for an undeclared one; 0 if neither is known
    type_declared: bool  # False: the client left the type to PostgreSQL, which infers it from the statement
    binary: bool
    is_null: bool
    value: str | None  # the text form; None for NULL or a binary value that could not be decoded
    hex: str  # the exact bytes, for binary values and undecodable text; "" otherwise

    @property
    def placeholder(self) -> str:
        return f"${self.position}"

    @property
    def format_name(self) -> str:
        return "binary" if self.binary else "text"

    def as_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "type": self.type_name,
            "type_declared": self.type_declared,
            "format": self.format_name,
            "null": self.is_null,
            "value": self.value,
            "decoded": self.is_null or self.value is not None,
            "hex": self.hex or None,
        }


def type_name(oid: int) -> str:
    """PostgreSQL's own name for a built-in type (``bigint``, ``timestamp with time zone``)."""
    info = psycopg.postgres.types.get(oid)
    return info.regtype if info is not None else f"type {oid}"


def _binary_text(oid: int, raw: bytes) -> str | None:
    """PostgreSQL's text form where policy.binary_text knows the type, else psycopg's reading of the bytes."""
    text = binary_to_text(oid, raw)
    if text is not None or oid == 0:
        return text
    loader = adapters.get_loader(oid, pq.Format.BINARY)
    if loader is None:
        return None
    try:
        value = loader(oid).load(raw)
    except Exception:  # a reading for people only: anything the loader cannot read is shown as bytes
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    return str(value)


def shown_params(params: StatementParams, resolved: Sequence[dict[str, Any]] | None = None) -> list[ShownParam]:
    """How each parameter is shown on the ticket page, in the API, in Slack and in the audit trail.

    ``resolved`` is the ticket's ``param_types``: what PostgreSQL made of each parameter's type when the ticket was
    opened (an undeclared type, or a type that is not built in, gets its name there)."""
    shown: list[ShownParam] = []
    for index, (value, fmt, declared) in enumerate(zip(params.values, params.formats, params.type_oids, strict=True)):
        known = resolved[index] if resolved is not None and index < len(resolved) else None
        oid = declared or (int(known["oid"]) if known else 0)
        if known and int(known["oid"]) == oid:
            name = str(known["name"])
        elif oid:
            name = type_name(oid)
        else:
            name = "unknown (PostgreSQL infers it from the statement)"
        text: str | None = None
        raw_hex = ""
        if value is not None and fmt == 1:
            text, raw_hex = _binary_text(oid, value), value.hex()
        elif value is not None:
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                text, raw_hex = value.decode("utf-8", "replace"), value.hex()
        shown.append(
            ShownParam(
                position=index + 1,
                type_name=name,
                type_oid=oid,
                type_declared=bool(declared),
                binary=fmt == 1,
                is_null=value is None,
                value=text,
                hex=raw_hex,
            )
        )
    return shown


def statement_digest(sql: str, params: StatementParams | None) -> str:
    """SHA-256 of exactly what will be sent: the SQL text, plus the parameters when there are any."""
    digest = hashlib.sha256(sql.encode("utf-8"))
    if params is not None:
        digest.update(b"\x00" + json.dumps(params.to_json(), sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()
