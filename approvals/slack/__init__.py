"""Slack approvals: a Block Kit message per ticket, signed interactions, reviewer links and owner notices.

Off unless ``SLACK_BOT_TOKEN`` is set. Reviews from Slack go through ``approvals.review.submit_review``, the same
code path (and rules) as the web UI and the API; Slack only carries the click.
"""
