"""Bind parameters of a held statement, kept exactly as the client sent them.

An approved statement runs byte-identical to what was approved: for a parameterised statement (extended query
protocol) that means the SQL text *and* each parameter's bytes, format and declared type. The digest covers all
of them, so a changed parameter is as much a different statement as a changed SQL text.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

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


def statement_digest(sql: str, params: StatementParams | None) -> str:
    """SHA-256 of exactly what will be sent: the SQL text, plus the parameters when there are any."""
    digest = hashlib.sha256(sql.encode("utf-8"))
    if params is not None:
        digest.update(b"\x00" + json.dumps(params.to_json(), sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()
