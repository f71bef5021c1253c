"""``manage.py mcp --token-file F``: the MCP server for one agent over stdio (an MCP client spawns it).

Like the web process, it holds no target credential (it refuses to start with one) and reaches the target only
through the gateway. The agent token is read from a file, never from the command line, where any local user
could read it in the process list. It is checked at start and again on every tool call, so revoking the agent
stops a running session. stdout carries only the protocol; logs go to stderr.
"""

from __future__ import annotations

import stat
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections, transaction

from audit.models import EventKind, Outcome
from audit.recorder import Context, record
from gateway.mcp.server import build_server
from gateway.mcp.tools import Caller, ToolRefused
from identity.authentication import principal_for_token
from identity.principal import Principal
from policy.credentials import credential_variables


class Command(BaseCommand):
    help = "Serve MCP over stdio for the agent whose token is in --token-file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--token-file", required=True, help="file holding the agent token (one line)")

    def handle(self, *args: Any, **options: Any) -> None:
        present = credential_variables()
        if present:
            raise CommandError("the MCP process must not hold target credentials; remove: " + ", ".join(present))
        token = _read_token(Path(options["token_file"]))
        context = Context(front="mcp", session_id=f"mcp:stdio-{uuid.uuid4().hex[:16]}")
        principal = _authenticate(token, context)
        with transaction.atomic():
            record(
                EventKind.AUTH_SUCCEEDED,
                principal=principal,
                context=context,
                summary=f"MCP stdio session started as {principal.describe()}",
            )
        close_old_connections()

        def resolve(_request: Any) -> Caller:
            return Caller(_authenticate(token, context, refusal=ToolRefused), context)

        anyio.run(build_server(resolve).run_stdio_async)


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
        mode = path.stat().st_mode
    except OSError as exc:
        raise CommandError(f"cannot read the token file: {exc.strerror}") from exc
    if not token:
        raise CommandError("the token file is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        sys.stderr.write(f"warning: {path} is readable by other users; chmod 600 it\n")
    return token


def _authenticate(token: str, context: Context, refusal: type[Exception] = CommandError) -> Principal:
    """The agent behind the token, or ``refusal`` (audited, never with the token)."""
    principal = principal_for_token(token)
    why = ""
    if principal is None:
        why = "unknown, revoked or expired token"
    elif not principal.is_agent:
        why = "MCP is for agent tokens, not personal ones"
    if why:
        record(
            EventKind.AUTH_FAILED,
            principal=principal,
            context=context,
            outcome=Outcome.FAILURE,
            summary=f"MCP stdio: {why}",
            details={"reason": why},
        )
        raise refusal(why)
    assert principal is not None
    return principal
