"""Block Kit for a ticket's message, and the plain texts sent to owners and to people who click.

Everything a requester or agent wrote (SQL, parameters, reason, comments, names) is escaped for Slack's mrkdwn, so a
statement cannot ping a channel or fake a link. Result rows never leave phigate: Slack sees the row count only.

The message shows what an approval covers: the statement and, for one held on the wire, each bind parameter with
its type (and the exact bytes of a binary one). When either does not fit in full, the message has no Approve
button: a reviewer approves only what they can see, in phigate.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from approvals.models import Decision, Review, Status, Ticket
from approvals.params import ShownParam, shown_params

APPROVE_ACTION = "phigate.approve"
REJECT_ACTION = "phigate.reject"
ACTIONS_BLOCK = "phigate.review"
SQL_LIMIT = 2500  # a section holds 3,000 characters; leave room for the fences
TEXT_LIMIT = 600
PARAMS_LIMIT = 2800  # the parameters' section, also within one section's 3,000 characters


def escape(text: str) -> str:
    """Slack's three control characters in mrkdwn and plain text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def action_value(ticket: Ticket) -> str:
    """What a button carries: the ticket and the digest of the statement shown. A click on a message about other
    bytes (an old message, a re-created database reusing ids) is refused instead of reviewing something else."""
    return f"{ticket.pk}:{ticket.sql_sha256}"


def parse_action_value(value: str) -> tuple[int, str] | None:
    ticket_id, _, digest = value.partition(":")
    if not (ticket_id.isascii() and ticket_id.isdigit() and len(ticket_id) <= 18) or len(digest) != 64:
        return None
    return int(ticket_id), digest


def requester(ticket: Ticket) -> str:
    owner = ticket.owner.get_username()
    return f"{ticket.agent.name} on behalf of {owner}" if ticket.agent else owner


def _names(reviews: list[Review], decision: Decision) -> str:
    return ", ".join(review.reviewer.get_username() for review in reviews if review.decision == decision)


def status_line(ticket: Ticket, reviews: list[Review]) -> str:
    """One line saying where the ticket stands: "1 of 2 approvals — approved by alice", "executed: 42 rows"."""
    approved = sum(1 for review in reviews if review.decision == Decision.APPROVE)
    by = _names(reviews, Decision.APPROVE)
    approved_by = f"approved by {by}" if by else ""
    if ticket.status == Status.PENDING:
        progress = f"{approved} of {ticket.approvals_required} approvals"
        return f"{progress} — {approved_by}" if approved_by else f"waiting for review: {progress}"
    if ticket.status == Status.REJECTED:
        rejection = next((review for review in reviews if review.decision == Decision.REJECT), None)
        if rejection is None:
            return "rejected"
        comment = f": {truncate(rejection.comment, TEXT_LIMIT)}" if rejection.comment else ""
        return f"rejected by {rejection.reviewer.get_username()}{comment}"
    if ticket.status == Status.APPROVED:
        return f"{approved_by}; waiting for the executor"
    if ticket.status == Status.EXECUTING:
        return f"{approved_by}; executing"
    if ticket.status == Status.EXECUTED:
        return f"executed: {ticket.rowcount} row{'' if ticket.rowcount == 1 else 's'} ({approved_by})"
    if ticket.status == Status.FAILED:
        return f"failed: {truncate(ticket.error, TEXT_LIMIT)} ({approved_by})"
    if ticket.status == Status.EXPIRED:
        return f"expired ({approved} of {ticket.approvals_required} approvals)"
    if ticket.status == Status.CANCELLED:
        return "cancelled by the requester"
    return str(ticket.status)


def fallback_text(ticket: Ticket, reviews: list[Review]) -> str:
    """The notification text (and what screen readers get): no SQL, no reason."""
    return escape(
        f"Ticket #{ticket.pk} on {ticket.datasource.name} (risk {ticket.risk}): {status_line(ticket, reviews)}"
    )


def _button(text: str, action_id: str, value: str, style: str, question: str) -> dict[str, Any]:
    return {
        "type": "button",
        "text": {"type": "plain_text", "text": text},
        "action_id": action_id,
        "value": value,
        "style": style,
        "confirm": {
            "title": {"type": "plain_text", "text": f"{text} this statement?"},
            "text": {"type": "mrkdwn", "text": question},
            "confirm": {"type": "plain_text", "text": text},
            "deny": {"type": "plain_text", "text": "Cancel"},
        },
    }


def _shows_faithfully(value: str) -> bool:
    """Whether an inline code span shows the value exactly: Slack has no escape for a backquote, and control or
    invisible characters (newlines, zero-width spaces) would not be seen."""
    return "`" not in value and not any(unicodedata.category(ch).startswith("C") for ch in value)


def _param_line(param: ShownParam) -> tuple[str, bool]:
    typed = param.type_name + ("" if param.type_declared else ", inferred")
    faithful = True
    if param.is_null:
        value = "NULL"
    elif param.value is None:
        value = "(not decoded: see the bytes)"
    elif _shows_faithfully(param.value):
        value = f"`{escape(param.value)}`"
    else:
        value, faithful = "_(characters Slack cannot show exactly: see it in phigate)_", False
    line = f"`{param.placeholder}` ({escape(typed)}, {param.format_name}) = {value}"
    return line + (f" · bytes `{param.hex}`" if param.hex else ""), faithful


def parameters_text(ticket: Ticket) -> tuple[str, bool]:
    """The parameters' section text, and whether it shows every value exactly and in full."""
    params = ticket.statement_params
    if params is None:
        return "", True
    lines = [_param_line(param) for param in shown_params(params, ticket.param_types)]
    faithful = all(ok for _, ok in lines)
    text = "*Parameters* (bound apart from the text; the approval covers them)\n" + "\n".join(line for line, _ in lines)
    if len(text) <= PARAMS_LIMIT:
        return text, faithful
    return truncate(text, PARAMS_LIMIT - 80) + "\n_Too long to show here in full: review them in phigate._", False


@dataclass(frozen=True)
class Message:
    text: str
    blocks: list[dict[str, Any]]


def ticket_message(ticket: Ticket, reviews: list[Review]) -> Message:
    """The whole message for the ticket's current state; the buttons exist only while it is pending, and Approve
    only when the message shows the whole statement and every parameter."""
    sql = truncate(ticket.sql, SQL_LIMIT).replace("```", "`\u200b``")
    params, params_complete = parameters_text(ticket)
    complete = params_complete and len(ticket.sql) <= SQL_LIMIT
    reasons = "\n".join(f"• {escape(truncate(reason, 200))}" for reason in list(ticket.reasons)[:10]) or "• —"
    about = f"*Requested by* {escape(requester(ticket))}"
    if ticket.reason:
        about += f"\n*Reason given:* {escape(truncate(ticket.reason, TEXT_LIMIT))}"
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": truncate(f"Ticket #{ticket.pk} · {ticket.datasource.name} · risk {ticket.risk}", 150),
            },
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": about}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"```{escape(sql)}```"}},
        *(
            [{"type": "section", "block_id": "phigate.params", "text": {"type": "mrkdwn", "text": params}}]
            if params
            else []
        ),
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Why it was held*\n{reasons}"}},
        {
            "type": "section",
            "block_id": "phigate.status",
            "text": {"type": "mrkdwn", "text": f"*Status:* {escape(status_line(ticket, reviews))}"},
        },
    ]
    if ticket.status == Status.PENDING:
        value = action_value(ticket)
        where = escape(ticket.datasource.name)
        with_values = " with the parameters shown" if ticket.params is not None else ""
        buttons = [_button("Reject", REJECT_ACTION, value, "danger", "The requester will be told.")]
        if complete:
            buttons.insert(
                0, _button("Approve", APPROVE_ACTION, value, "primary", f"It will run once on *{where}*{with_values}.")
            )
        else:
            blocks.append(
                {
                    "type": "section",
                    "block_id": "phigate.incomplete",
                    "text": {
                        "type": "mrkdwn",
                        "text": "_This message cannot show the whole statement and its values: approve it in phigate._",
                    },
                }
            )
        blocks.append({"type": "actions", "block_id": ACTIONS_BLOCK, "elements": buttons})
    blocks.append(
        {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": f"<{ticket.url}|Open in phigate> · SHA-256 `{ticket.sql_sha256[:16]}…`"}
            ],
        }
    )
    return Message(text=fallback_text(ticket, reviews), blocks=blocks)


def owner_notice(ticket: Ticket, reviews: list[Review]) -> str:
    """What the accountable owner is told in a direct message when their ticket is decided or run."""
    return (
        escape(
            f"Your ticket #{ticket.pk} ({requester(ticket)}, {ticket.datasource.name}): {status_line(ticket, reviews)}"
        )
        + f" <{ticket.url}|Open in phigate>"
    )


def link_instructions(link_url: str) -> str:
    return (
        "Your Slack account is not linked to a phigate account, so nothing was recorded. "
        f"<{link_url}|Link your account> while signed in to phigate (the link works for 10 minutes), then click again."
    )
