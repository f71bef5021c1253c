"""Which transaction status letter to put in a ReadyForQuery the gateway writes itself.

Upstream's ReadyForQuery is authoritative and is simply relayed. The gateway needs its own answer only
when it ends a query without upstream (a refused statement, an aborted relay); then the client must see
the status upstream would report, or it will, for instance, keep issuing statements in a transaction it
believes is still open.
"""

from __future__ import annotations

from typing import Final

from gateway.pgwire.backend import BackendMessage, CommandComplete, ErrorResponse, ReadyForQuery, TransactionStatus

_OPENS: Final = frozenset({"BEGIN", "START TRANSACTION"})
_ENDS: Final = frozenset({"COMMIT", "ROLLBACK", "PREPARE TRANSACTION"})


class TransactionTracker:
    """Follows upstream traffic and keeps a best estimate of the transaction status.

    ReadyForQuery sets the status exactly. Between two of them it is inferred from command tags and
    errors; that inference cannot tell ``ROLLBACK TO SAVEPOINT`` (tag 'ROLLBACK', still in a block) from
    a full ROLLBACK, so trust it only until the next upstream ReadyForQuery.
    """

    __slots__ = ("status",)

    def __init__(self, status: TransactionStatus = "I") -> None:
        self.status: TransactionStatus = status

    def observe(self, message: BackendMessage) -> TransactionStatus:
        """Update from one message received from upstream; returns the new status."""
        if isinstance(message, ReadyForQuery):
            self.status = message.status
        elif isinstance(message, CommandComplete):
            if message.tag in _OPENS:
                self.status = "T"
            elif message.tag in _ENDS:
                self.status = "I"
        elif isinstance(message, ErrorResponse) and not message.is_fatal:
            self.local_error()
        return self.status

    def local_error(self) -> TransactionStatus:
        """An error inside a transaction block aborts it (also when the gateway raised the error)."""
        if self.status == "T":
            self.status = "E"
        return self.status

    def ready_for_query(self) -> ReadyForQuery:
        return ReadyForQuery(self.status)
