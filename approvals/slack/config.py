"""Where the Slack settings are read, at call time (so tests and long-lived processes see the current values).

Secrets come from the environment only: the default bot token is ``SLACK_BOT_TOKEN`` (or ``SLACK_BOT_TOKEN_FILE``);
a data source may name another variable (``SlackChannel.bot_token_env``), never hold a token itself.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings

from phigate import envconfig

HOOKS_PREFIX = "https://hooks.slack.com/"


class SlackNotConfigured(Exception):
    """A token or channel this call needs is not configured in this process: retrying will not help."""


def enabled() -> bool:
    """The integration is on only where a bot token is configured."""
    return bool(settings.SLACK_BOT_TOKEN)


def api_url() -> str:
    return str(settings.SLACK_API_URL).rstrip("/") + "/"


def default_bot_token() -> str:
    token = str(settings.SLACK_BOT_TOKEN or "")
    if not token:
        raise SlackNotConfigured("SLACK_BOT_TOKEN is not set")
    return token


def bot_token_from_env(variable: str) -> str:
    """The token held in the environment variable (or ``*_FILE``) a data source names."""
    if not variable:
        return default_bot_token()
    token = envconfig.get_str(variable)
    if not token:
        raise SlackNotConfigured(f"{variable} is not set in this process")
    return token


def response_url_allowed(url: str) -> bool:
    """A ``response_url`` comes inside a signed payload, but the worker only ever posts to Slack's own hooks host
    (or to the origin of ``SLACK_API_URL``, which is where a test receiver or a proxy lives)."""
    if url.startswith(HOOKS_PREFIX):
        return True
    api = urlsplit(api_url())
    target = urlsplit(url)
    return (target.scheme, target.netloc) == (api.scheme, api.netloc) and bool(target.netloc)


def team_allowed(team_id: str) -> bool:
    """With ``SLACK_TEAM_ID`` set, only that workspace may act; without it, any workspace the app is in."""
    configured = str(settings.SLACK_TEAM_ID or "")
    return not configured or team_id == configured
