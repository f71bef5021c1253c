"""The gateway's read-only pool survives many reads on the same connections (reset + no stale prepares)."""

from __future__ import annotations

from gateway.read_executor import ReadExecutor


def test_many_reads_through_a_one_connection_pool(target) -> None:  # type: ignore[no-untyped-def]
    executor = ReadExecutor(target.read_url, max_size=1)
    try:
        for attempt in range(30):  # well past psycopg's automatic-prepare threshold (5)
            result = executor.run("SELECT count(*) FROM scratch", cursor_capable=True, row_cap=10, timeout_ms=5000)
            assert result.rows and result.rows[0][0] is not None, attempt
            shown = executor.run("SHOW statement_timeout", cursor_capable=False, row_cap=10, timeout_ms=5000)
            assert shown.rows, attempt
    finally:
        executor.close()
