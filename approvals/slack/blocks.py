"""Block Kit for a ticket's message, and the plain texts sent to owners and to people who click.

Everything a requester or agent wrote (SQL, reason, comments, names) is escaped for Slack's mrkdwn, so a statement
cannot ping a channel or fake a link. Result rows never leave phigate: Slack sees the row count only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from approvals.models import Decision, Review, Status, Ticket

APPROVE_ACTION = "phigate.approve"
REJECT_ACTION = "phigate.reject"
ACTIONS_BLOCK = "phigate.review"
SQL_LIMIT = 2500  # a section holds 3,000 characters; leave room for the fences
TEXT_LIMIT = 600


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
        return f"executed: {ticket.rowcount} rows ({approved_by})"
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


@dataclass(frozen=True)
class Message:
    text: str
    blocks: list[dict[str, Any]]


def ticket_message(ticket: Ticket, reviews: list[Review]) -> Message:
    """The whole message for the ticket's current state; the buttons exist only while it is pending."""
    sql = truncate(ticket.sql, SQL_LIMIT).replace("```", "`\u200b``")
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
        blocks.append(
            {
                "type": "actions",
                "block_id": ACTIONS_BLOCK,
                "elements": [
                    _button("Approve", APPROVE_ACTION, value, "primary", f"It will run once on *{where}*."),
                    _button("Reject", REJECT_ACTION, value, "danger", "The requester will be told."),
                ],
            }
        )
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
