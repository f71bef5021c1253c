"""Bearer tokens: random, shown once, stored only as a SHA-256 digest.

Tokens carry 256 bits of randomness, so a plain SHA-256 is enough to make the stored form useless to a thief
(no dictionary to try) and lets us look a token up by its digest with a unique index, in constant time.
The prefix says what kind of principal a token belongs to, so a leaked token can be recognised in a scan.
"""

from __future__ import annotations

import hashlib
import secrets

AGENT_PREFIX = "pga_"
USER_PREFIX = "pgu_"


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
