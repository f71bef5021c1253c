"""Slack's clock window at its exact edges, on the pure check (no web process, no clock of the machine)."""

from __future__ import annotations

import pytest

from approvals.slack.signature import WINDOW_SECONDS, InvalidSignature, check_signature, sign

SECRET = "signing-secret-for-the-boundary"
BODY = b"payload=%7B%7D"
NOW = 1_800_000_000.0


def signed_at(offset: int) -> tuple[str, str]:
    timestamp = str(int(NOW) + offset)
    return timestamp, sign(SECRET, timestamp, BODY)


@pytest.mark.parametrize("offset", [-WINDOW_SECONDS, 0, WINDOW_SECONDS])
def test_a_timestamp_within_five_minutes_either_way_is_accepted(offset: int) -> None:
    timestamp, signature = signed_at(offset)
    check_signature(SECRET, timestamp, BODY, signature, now=NOW)


@pytest.mark.parametrize(
    ("offset", "why"),
    [(-WINDOW_SECONDS - 1, "older than five minutes"), (WINDOW_SECONDS + 1, "more than five minutes in the future")],
)
def test_one_second_beyond_the_window_is_refused(offset: int, why: str) -> None:
    timestamp, signature = signed_at(offset)
    with pytest.raises(InvalidSignature, match=why):
        check_signature(SECRET, timestamp, BODY, signature, now=NOW)


def test_a_signature_for_other_bytes_is_refused() -> None:
    timestamp, signature = signed_at(0)
    with pytest.raises(InvalidSignature, match="does not match"):
        check_signature(SECRET, timestamp, BODY + b" ", signature, now=NOW)
