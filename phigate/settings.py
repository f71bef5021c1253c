"""Django settings, all from the environment (see phigate.envconfig and docs/architecture.md).

Strict on purpose: a missing secret or a malformed value stops the process at start-up.
Target-database credentials are *not* settings: each process reads only its own
(``DATASOURCE_<NAME>_READ_URL`` in the gateway, ``..._WRITE_URL`` in the executor), see policy.credentials.
"""

from __future__ import annotations

import zoneinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.exceptions import ImproperlyConfigured

from phigate import envconfig as env

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = env.require_str("DJANGO_SECRET_KEY")
DEBUG = env.get_bool("DEBUG", False)
ALLOWED_HOSTS = env.get_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
PUBLIC_URL = (env.get_str("PUBLIC_URL", "http://127.0.0.1:8000") or "").rstrip("/")
CSRF_TRUSTED_ORIGINS = env.get_list("CSRF_TRUSTED_ORIGINS", [PUBLIC_URL])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served from this origin (no CDN)
    "mozilla_django_oidc",
    "identity",
    "policy",
    "audit",
    "approvals",
    "gateway",
]

MIDDLEWARE = [
    # First: Redis or the control plane unreachable is a 503 with Retry-After (JSON for the API), not a 500.
    "phigate.outages.DependencyOutageMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "phigate.security.ContentSecurityPolicyMiddleware",  # strict CSP on every response, static files included
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files under uvicorn (Django serves none itself)
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "phigate.urls"
ASGI_APPLICATION = "phigate.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "identity.context_processors.sign_in_options",
            ],
            # The shell's tags (navigation bar, URLs that may not exist yet): phigate/ is not an app.
            "libraries": {"shell": "phigate.templatetags.shell"},
        },
    },
]

DATABASES = {
    "default": env.parse_postgres_url("DATABASE_URL", env.require_str("DATABASE_URL")).django_database(),
}
DATABASES["default"]["CONN_MAX_AGE"] = env.get_int("DATABASE_CONN_MAX_AGE", 0)
# A control plane that accepts TCP and then says nothing must not hold a connection attempt for minutes, and a
# peer that vanished must be noticed: bounded connection set-up, TCP keepalives (libpq parameters; a URL's own
# query parameters win).
_CONNECTION_BOUNDS = {
    "connect_timeout": env.get_int("DATABASE_CONNECT_TIMEOUT_SECONDS", 10, minimum=1),
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
DATABASES["default"]["OPTIONS"] = {**_CONNECTION_BOUNDS, **DATABASES["default"]["OPTIONS"]}  # type: ignore[dict-item]
# A connection kept across requests (DATABASE_CONN_MAX_AGE > 0) is checked before its first use in a request, so
# one a database restart or pg_terminate_backend killed is replaced instead of failing the request.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.get_bool("DATABASE_CONN_HEALTH_CHECKS", True)
# The same database on a connection of its own, for the few writes that must not join whatever transaction the
# caller is in: an evidence export reports its progress from inside its read-only snapshot (audit.evidence_jobs).
SIDE_DATABASE = "side"
DATABASES[SIDE_DATABASE] = {**DATABASES["default"]}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.get_str("REDIS_URL", "redis://127.0.0.1:6379/0") or ""

# --- Identity -------------------------------------------------------------------------------------------------
LOCAL_LOGIN = env.get_bool("LOCAL_LOGIN", False)
OIDC_RP_CLIENT_ID = env.get_str("OIDC_RP_CLIENT_ID")
OIDC_ENABLED = bool(OIDC_RP_CLIENT_ID)
OIDC_GROUPS_CLAIM = env.get_str("OIDC_GROUPS_CLAIM", "groups")  # roles and approver groups come from it
AUTHENTICATION_BACKENDS: list[str] = []
if OIDC_ENABLED:
    OIDC_RP_CLIENT_SECRET = env.require_str("OIDC_RP_CLIENT_SECRET")
    OIDC_OP_AUTHORIZATION_ENDPOINT = env.require_str("OIDC_OP_AUTHORIZATION_ENDPOINT")
    OIDC_OP_TOKEN_ENDPOINT = env.require_str("OIDC_OP_TOKEN_ENDPOINT")
    OIDC_OP_USER_ENDPOINT = env.require_str("OIDC_OP_USER_ENDPOINT")
    OIDC_OP_JWKS_ENDPOINT = env.require_str("OIDC_OP_JWKS_ENDPOINT")
    OIDC_RP_SIGN_ALGO = env.get_str("OIDC_RP_SIGN_ALGO", "RS256")
    OIDC_RP_SCOPES = env.get_str("OIDC_RP_SCOPES", "openid email profile")
    AUTHENTICATION_BACKENDS.append("identity.oidc.RoleMappingOIDCBackend")
if LOCAL_LOGIN:
    AUTHENTICATION_BACKENDS.append("django.contrib.auth.backends.ModelBackend")
if not AUTHENTICATION_BACKENDS:
    # No way to sign in is still a valid deployment for API-only use; say so rather than guess.
    AUTHENTICATION_BACKENDS.append("identity.backends.NoInteractiveSignIn")
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
SESSION_COOKIE_AGE = env.get_int("SESSION_IDLE_SECONDS", 15 * 60, minimum=60)
# Approving in the web UI needs a sign-in younger than this, however active the session has been since.
REVIEW_REAUTH_SECONDS = env.get_int("REVIEW_REAUTH_SECONDS", 60 * 60, minimum=60)
SESSION_SAVE_EVERY_REQUEST = True  # idle timeout, not absolute: each request extends the session
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env.get_bool("SECURE_COOKIES", PUBLIC_URL.startswith("https://"))
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
]

# --- Approval rules -------------------------------------------------------------------------------------------
TICKET_PENDING_TTL_SECONDS = env.get_int("TICKET_PENDING_TTL_SECONDS", 3600, minimum=1)
APPROVAL_VALIDITY_SECONDS = env.get_int("APPROVAL_VALIDITY_SECONDS", 900, minimum=1)
EXECUTION_STATEMENT_TIMEOUT_MS = env.get_int("EXECUTION_STATEMENT_TIMEOUT_MS", 60_000, minimum=1)
READ_STATEMENT_TIMEOUT_MS = env.get_int("READ_STATEMENT_TIMEOUT_MS", 30_000, minimum=1)
RESULT_ROW_CAP = env.get_int("RESULT_ROW_CAP", 1000, minimum=1, maximum=1_000_000)
WAIT_TIMEOUT_MAX_SECONDS = env.get_int("WAIT_TIMEOUT_MAX_SECONDS", 60, minimum=1)
# How often each executor queues the execution sweep, which hands approved tickets whose enqueue was lost and
# tickets whose executor died to a live executor (approvals.tasks.ExecutionSweepTimer). An upper bound on that
# delay, not a liveness guess: liveness is the executor's lock (approvals.execution_lock).
EXECUTION_SWEEP_SECONDS = env.get_int("EXECUTION_SWEEP_SECONDS", 10, minimum=1, maximum=3600)

# Key for deterministic pseudonyms (HMAC). Only processes that mask results (gateway, executor) need it;
# they check for it at start-up (policy.masking.require_pseudonym_key).
PSEUDONYM_KEY = env.get_str("PSEUDONYM_KEY")
# Key for the pseudonyms of patient keys in the accounting of disclosures (policy.patient_keys): the gateway
# records which patients' rows each result carried under it, the web computes a looked-up patient's with it.
# Never the masking key: a masked value shown to an agent must not be comparable with the audit's pseudonyms.
PATIENT_PSEUDONYM_KEY = env.get_str("PATIENT_PSEUDONYM_KEY")

# Ed25519 key for audit checkpoints and evidence bundles (audit.signing): held outside the database. Checked
# here so a malformed key stops the process at start-up rather than at the first checkpoint.
AUDIT_SIGNING_KEY = env.get_str("AUDIT_SIGNING_KEY")
AUDIT_PUBLIC_KEY = env.get_str("AUDIT_PUBLIC_KEY")
AUDIT_CHAIN_INTERVAL_SECONDS = env.get_int("AUDIT_CHAIN_INTERVAL_SECONDS", 5, minimum=1)
# verify_audit fails when the sequencer has not passed for this long while events were written (audit.chain).
AUDIT_UNCHAINED_BOUND_SECONDS = env.get_int("AUDIT_UNCHAINED_BOUND_SECONDS", 300, minimum=1)
# HIPAA asks for six years; the database refuses to purge anything younger whatever this says.
# Where evidence bundles asked for in the UI are written (by the executor) and served from (by web).
EVIDENCE_DIR = Path(env.get_str("EVIDENCE_DIR", str(BASE_DIR / "var" / "evidence")) or "")
AUDIT_RETENTION_DAYS = env.get_int("AUDIT_RETENTION_DAYS", 6 * 366, minimum=6 * 366)
# The wire gateway's local write-ahead audit journal (audit.journal): a statement's record is fsynced here
# before its rows are released, then shipped to the event table within a fraction of a second. Unset: every
# record waits for a commit of the event table instead (slower, no local state). Must be a local disk.
AUDIT_JOURNAL_DIR = env.get_str("AUDIT_JOURNAL_DIR")
# Fail closed when the event table falls this far behind the journal (the control plane is unreachable).
AUDIT_JOURNAL_MAX_LAG_SECONDS = env.get_int("AUDIT_JOURNAL_MAX_LAG_SECONDS", 30, minimum=1, maximum=3600)
# The audit pages show and read times in this zone unless the officer picks another (audit.filters); the page
# always names the zone. Stored times stay UTC.
AUDIT_TIME_ZONE = env.get_str("AUDIT_TIME_ZONE", "UTC") or "UTC"
try:
    ZoneInfo(AUDIT_TIME_ZONE)
except (ValueError, ZoneInfoNotFoundError):
    raise ImproperlyConfigured(f"AUDIT_TIME_ZONE is not an IANA time zone name: {AUDIT_TIME_ZONE!r}") from None
# Replay splits an agent's day of HTTP calls where it was idle this long: one stretch of work per session.
AUDIT_SESSION_IDLE_MINUTES = env.get_int("AUDIT_SESSION_IDLE_MINUTES", 30, minimum=1, maximum=24 * 60)

# --- Activity review (audit.activity_review; 45 CFR 164.308(a)(1)(ii)(D)) -------------------------------------
# Each data source's activity is reviewed per period of this many days (weekly: Monday to Monday, UTC). A period
# keeps the bounds it was created with, so changing this only shapes the periods created afterwards.
ACTIVITY_REVIEW_PERIOD_DAYS = env.get_int("ACTIVITY_REVIEW_PERIOD_DAYS", 7, minimum=1, maximum=92)
# A period not signed off this many days after it ended is overdue (shown on the review list and in the bar).
ACTIVITY_REVIEW_OVERDUE_DAYS = env.get_int("ACTIVITY_REVIEW_OVERDUE_DAYS", 7, minimum=0, maximum=365)
# How many past periods a data source gets when periods are first created for it (a new install, a new source).
ACTIVITY_REVIEW_BACKFILL_PERIODS = env.get_int("ACTIVITY_REVIEW_BACKFILL_PERIODS", 4, minimum=0, maximum=520)
# Off-hours: statements outside [start, end) o'clock on Monday to Friday, in this time zone.
ACTIVITY_REVIEW_TIME_ZONE = env.get_str("ACTIVITY_REVIEW_TIME_ZONE", "UTC") or "UTC"
ACTIVITY_REVIEW_BUSINESS_START_HOUR = env.get_int("ACTIVITY_REVIEW_BUSINESS_START_HOUR", 7, minimum=0, maximum=23)
ACTIVITY_REVIEW_BUSINESS_END_HOUR = env.get_int("ACTIVITY_REVIEW_BUSINESS_END_HOUR", 19, minimum=1, maximum=24)
if ACTIVITY_REVIEW_BUSINESS_END_HOUR <= ACTIVITY_REVIEW_BUSINESS_START_HOUR:
    raise ImproperlyConfigured("ACTIVITY_REVIEW_BUSINESS_END_HOUR must be after ACTIVITY_REVIEW_BUSINESS_START_HOUR")
try:
    zoneinfo.ZoneInfo(ACTIVITY_REVIEW_TIME_ZONE)
except (zoneinfo.ZoneInfoNotFoundError, ValueError):
    raise ImproperlyConfigured(f"ACTIVITY_REVIEW_TIME_ZONE={ACTIVITY_REVIEW_TIME_ZONE!r} is not a time zone") from None
# A PHI volume outlier: an agent's PHI rows in a period at least this many, and above FACTOR times its own average
# over the BASELINE periods before (a new agent's baseline is zero).
ACTIVITY_REVIEW_PHI_MIN_ROWS = env.get_int("ACTIVITY_REVIEW_PHI_MIN_ROWS", 100, minimum=1)
ACTIVITY_REVIEW_PHI_FACTOR = env.get_int("ACTIVITY_REVIEW_PHI_FACTOR", 3, minimum=1)
ACTIVITY_REVIEW_BASELINE_PERIODS = env.get_int("ACTIVITY_REVIEW_BASELINE_PERIODS", 4, minimum=1, maximum=52)

# --- Live pages (Channels over Redis) ------------------------------------------------------------------------
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # A socket timeout above the layer's 5 s blocking pop: redis-py 8 otherwise times the pop out and the
        # consumer (and its websocket) dies every 5 idle seconds.
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30}], "prefix": "phigate:live:"},
    }
}

# --- Slack ----------------------------------------------------------------------------------------------------
# Approvals in Slack (approvals/slack/): off unless SLACK_BOT_TOKEN is set. Secrets come from the environment (or
# NAME_FILE) only. The web process checks request signatures with SLACK_SIGNING_SECRET (without it, every
# interaction gets 401); email links need SLACK_TEAM_ID. A data source may post to its own channel with its own
# bot (approvals.slack.models.SlackChannel), whose token is again an environment variable, named there.
SLACK_BOT_TOKEN = env.get_str("SLACK_BOT_TOKEN") or ""
SLACK_SIGNING_SECRET = env.get_str("SLACK_SIGNING_SECRET") or ""
SLACK_TEAM_ID = env.get_str("SLACK_TEAM_ID") or ""
SLACK_DEFAULT_CHANNEL = env.get_str("SLACK_DEFAULT_CHANNEL") or ""
SLACK_API_URL = env.get_str("SLACK_API_URL") or "https://slack.com/api/"
if not SLACK_API_URL.startswith(("https://", "http://")):
    raise ImproperlyConfigured(f"SLACK_API_URL={SLACK_API_URL!r} must be an http(s) URL")
if SLACK_TEAM_ID and not SLACK_TEAM_ID.isalnum():
    raise ImproperlyConfigured(f"SLACK_TEAM_ID={SLACK_TEAM_ID!r} is not a Slack team id")

# --- Celery (executor) ----------------------------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
# Exactly-once comes from the executor lock, the claim and the target-side ledger, never from the broker. The
# execution tasks set acks_late themselves (approvals/tasks.py), so a message taken by a worker that dies is
# delivered again; the other tasks keep early acknowledgement.
CELERY_TASK_ACKS_LATE = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "executor"

# --- API ------------------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["identity.authentication.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.CursorPagination",
    "PAGE_SIZE": 100,
    # DRF's handler, plus: Redis or the control plane unreachable is a JSON 503 with Retry-After.
    "EXCEPTION_HANDLER": "phigate.outages.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "phigate API",
    "DESCRIPTION": "Agents submit SQL; reviewers approve; compliance searches the audit trail.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI's files come from drf-spectacular-sidecar, served by this process: the site has no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Browser security headers (see phigate/security.py for the Content-Security-Policy) -------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True  # X-Content-Type-Options: nosniff
SECURE_REFERRER_POLICY = "same-origin"  # ticket URLs and filters never leave in a Referer
X_FRAME_OPTIONS = "DENY"  # with CSP frame-ancestors 'none'
CSRF_FAILURE_VIEW = "phigate.views.csrf_failure"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# The web process serves static files itself (WhiteNoise), straight from the finders (the apps' static/
# directories and STATICFILES_DIRS): no collectstatic step, so a fresh clone, `make demo` and the tests serve the
# same files. Set STATIC_ROOT to serve a collectstatic output as well.
STATIC_ROOT = env.get_str("STATIC_ROOT")
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# Never log request bodies (they carry SQL with literals, tokens in headers): only our own structured lines.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"routine_refusals": {"()": "phigate.log_filters.RoutineRefusalsWithoutTraceback"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    # A refused page is one line, not a traceback (Django attaches one to every PermissionDenied).
    "loggers": {"django.request": {"filters": ["routine_refusals"]}},
    "root": {"handlers": ["console"], "level": env.get_str("LOG_LEVEL", "INFO")},
}

CELERY_BEAT_SCHEDULE = {
    "expire-overdue-tickets": {"task": "approvals.expire_overdue", "schedule": 30.0},
    "extend-audit-chain": {"task": "audit.extend_chain", "schedule": float(AUDIT_CHAIN_INTERVAL_SECONDS)},
    # Review periods exist (and become overdue) whether or not anyone opens the review pages.
    "open-review-periods": {"task": "audit.open_review_periods", "schedule": 3600.0},
}
