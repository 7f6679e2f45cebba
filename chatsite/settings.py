"""Slipstream settings, twelve-factor: everything comes from the environment.

With nothing set, Slipstream runs on embedded defaults: a SQLite file under ``var/``, the
in-memory channel layer, and DEBUG off. See README.md for the variables.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import django_stubs_ext
import environ
from csp.constants import NONE, SELF
from django.core.management.utils import get_random_secret_key

# Lets admin classes be written ModelAdmin[Model] for the type checker.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()

# ------------------------------------------------------------------------------------------------
# Core
# ------------------------------------------------------------------------------------------------
DEBUG = env.bool("DJANGO_DEBUG", default=False)


def _secret_key() -> str:
    """An explicit DJANGO_SECRET_KEY wins; otherwise one random key kept in ``var/`` so that
    sessions survive restarts of a local install."""
    key: str = env.str("DJANGO_SECRET_KEY", default="")
    if key:
        return key
    key_file = VAR_DIR / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    VAR_DIR.mkdir(exist_ok=True)
    key = get_random_secret_key()
    key_file.write_text(key)
    key_file.chmod(0o600)
    return key


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
# Behind a TLS-terminating proxy (deploy/nginx.conf) that sets X-Forwarded-Proto: requests are
# HTTPS, so cookies are Secure, HSTS is sent and plain HTTP is redirected. Without it (`make run`,
# plain HTTP on loopback) none of that applies. SameSite stays Django's default, Lax.
BEHIND_PROXY = env.bool("DJANGO_BEHIND_PROXY", default=False)
if BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = BEHIND_PROXY
CSRF_COOKIE_SECURE = BEHIND_PROXY
# A page in the site's stylesheet (Django's styles itself inline, which the CSP blocks), or
# OpenAI's envelope for the JSON endpoints.
CSRF_FAILURE_VIEW = "chat.middleware.csrf_failure"
# A year, once behind TLS; browsers then refuse plain HTTP to this host for that long. Start
# lower (e.g. 300) when trying it out. Subdomains only when asked: they may not all have TLS.
SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=31536000 if BEHIND_PROXY else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_SSL_REDIRECT = env.bool("DJANGO_SSL_REDIRECT", default=BEHIND_PROXY)
# Load balancers probe health and Prometheus scrapes over plain HTTP inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "django_htmx",
    "csp",
    "axes",
    "mozilla_django_oidc",
    "chat",
]

# Django's usual chain, each kept on the event loop under ASGI (chat.middleware: Django's own
# classes; WhiteNoise only for STATIC_URL), so a request pays no thread hop for it.
MIDDLEWARE = [
    "chat.middleware.SecurityMiddleware",
    "chat.middleware.StaticFilesMiddleware",
    "chat.middleware.SessionMiddleware",
    "chat.middleware.CommonMiddleware",
    "chat.middleware.CsrfViewMiddleware",
    "chat.middleware.AuthenticationMiddleware",
    # Spawns a single sign-on session's recheck when due (timestamps only: no I/O, no hop) and
    # answers a JSON endpoint's redirect to sign in with 401.
    "chat.sso_session.SessionRecheck",
    "chat.middleware.MessageMiddleware",
    "chat.middleware.XFrameOptionsMiddleware",
    "chat.csp.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Refuses sign-ins from an address with too many failed ones (any usernames).
    "chat.lockout.address_throttle",
    # Turns a locked-out login (AxesStandaloneBackend) into chat.lockout's page.
    "axes.middleware.AxesMiddleware",
    # Last, so its process_exception sees a view's exception first: JSON errors for /v1 and
    # the browser's JSON endpoints.
    "chat.middleware.JsonErrorMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"

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
                "chat.sso.sign_in_options",
            ],
        },
    },
]

# ------------------------------------------------------------------------------------------------
# Database
# ------------------------------------------------------------------------------------------------
VAR_DIR.mkdir(exist_ok=True)
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
# Requests' synchronous code runs on a few long-lived threads (chatsite.asgi), so each thread's
# connection is kept for the next request instead of being opened and closed per request (a
# new SQLite connection registers its functions and runs its PRAGMAs; a PostgreSQL one is a
# round trip and an authentication). Checked before reuse. DATABASE_URL's ?conn_max_age= wins.
if not DATABASES["default"].get("CONN_MAX_AGE"):
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("SLIPSTREAM_DB_CONN_MAX_AGE", default=600)
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the stream views write checkpoints while pages read; the busy timeout makes
    # concurrent writers wait instead of failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}
    )
elif "postgresql" in DATABASES["default"]["ENGINE"]:
    # A database host that does not answer at all (a partition, a dead failover address) fails
    # a connection in 5 s, not after the system's minutes of TCP retries: the thread that
    # stores answers would be held that long, and readers' ends with it (chat.records keeps
    # what it could not store). DATABASE_URL's ?connect_timeout= wins.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# ------------------------------------------------------------------------------------------------
# Sharing between processes
# ------------------------------------------------------------------------------------------------
# REDIS_URL switches everything that must be shared between processes: the cache (and so the
# widget's rate-limit counters and readcache's lookups), and the relay's generation buffers,
# stop signals, single-flight claims and slot leases (chat.relay.cluster, on redis-py directly).
# Unset: one process, all in memory. No Channels channel layer is configured: nothing here
# sends to a channel group (Stop fan-out goes through chat.relay.cluster's pub/sub), and daphne
# serves plain HTTP through Channels' ProtocolTypeRouter, which needs none.
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "slipstream",
            # A Redis that does not answer fails a cache call in a second or two instead of
            # holding the request (redis-py waits forever by default); the same limits as
            # chat.relay.cluster's client (CONNECT_TIMEOUT_S, COMMAND_TIMEOUT_S). While Redis is
            # down the widget answers 503 (its limits cannot be counted) and readcache reads
            # the database: README, "While Redis is down".
            "OPTIONS": {"socket_connect_timeout": 1.0, "socket_timeout": 3.0},
        }
    }
else:
    # One process: memory. CACHE_URL (django-environ's forms, e.g. filecache:///path) lets
    # processes on one machine share it without Redis, as the tests' server and runner do.
    CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://")}

# ------------------------------------------------------------------------------------------------
# Auth
# ------------------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Single sign-on (chat.sso, mozilla-django-oidc): on when SLIPSTREAM_OIDC_ISSUER is set. The
# provider's endpoints come from its discovery document; its client's redirect URI is
# https://<host>/oidc/callback/. SLIPSTREAM_LOCAL_LOGIN=false leaves single sign-on as the only
# way in (the app's and the admin's password forms refuse).
SLIPSTREAM_OIDC_ISSUER = env.str("SLIPSTREAM_OIDC_ISSUER", default="")
SSO_ENABLED = bool(SLIPSTREAM_OIDC_ISSUER)
_issuer = urlsplit(SLIPSTREAM_OIDC_ISSUER)
OIDC_ISSUER_ORIGIN = f"{_issuer.scheme}://{_issuer.netloc}" if SSO_ENABLED else ""
LOCAL_LOGIN = env.bool("SLIPSTREAM_LOCAL_LOGIN", default=True) or not SSO_ENABLED
SLIPSTREAM_OIDC_LABEL = env.str("SLIPSTREAM_OIDC_LABEL", default="Sign in with single sign-on")
# The claim that names a new user, the claim whose values set a user's groups ("": groups are
# left to staff), an optional map of its values to group names (value=group,…; then unmapped
# values are dropped), and the e-mail domains allowed to sign in (empty: any).
SLIPSTREAM_OIDC_USERNAME_CLAIM = env.str(
    "SLIPSTREAM_OIDC_USERNAME_CLAIM", default="preferred_username"
)
SLIPSTREAM_OIDC_GROUPS_CLAIM = env.str("SLIPSTREAM_OIDC_GROUPS_CLAIM", default="")
SLIPSTREAM_OIDC_GROUPS_MAP = env.dict("SLIPSTREAM_OIDC_GROUPS_MAP", default={})
SLIPSTREAM_OIDC_ALLOWED_DOMAINS = [
    d.lower() for d in env.list("SLIPSTREAM_OIDC_ALLOWED_DOMAINS", default=[])
]
# mozilla-django-oidc's own settings.
OIDC_RP_CLIENT_ID = env.str("SLIPSTREAM_OIDC_CLIENT_ID", default="")
OIDC_RP_CLIENT_SECRET = env.str("SLIPSTREAM_OIDC_CLIENT_SECRET", default="")
OIDC_RP_SCOPES = env.str("SLIPSTREAM_OIDC_SCOPES", default="openid email profile")
OIDC_RP_SIGN_ALGO = env.str("SLIPSTREAM_OIDC_SIGN_ALGO", default="RS256")
OIDC_USE_PKCE = True
OIDC_TOKEN_USE_BASIC_AUTH = True  # client_secret_basic: the default of OpenID Connect Core §9
OIDC_TIMEOUT = 10  # s, each call to the provider
OIDC_CALLBACK_CLASS = "chat.sso.SignOnCallback"
OIDC_AUTHENTICATE_CLASS = "chat.sso.SignOnStart"
# The ID token is kept in the session: RP-initiated logout sends it as id_token_hint.
OIDC_STORE_ID_TOKEN = True
# How often a single sign-on session asks the provider whether its account may still sign in
# (a refresh token grant, off the request path: chat.sso_session), s; 0: at each request.
SLIPSTREAM_SSO_RECHECK_S = env.float("SLIPSTREAM_SSO_RECHECK_S", default=300.0)
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    *(["django.contrib.auth.backends.ModelBackend"] if LOCAL_LOGIN else []),
    *(["chat.sso.SignOnBackend"] if SSO_ENABLED else []),
]
# django-axes: a login refused after SLIPSTREAM_LOGIN_FAILURE_LIMIT failures for one username
# from one address (both the app's and the admin's login), for SLIPSTREAM_LOGIN_COOLOFF_MIN
# minutes; staff unlock early by deleting the "Access attempts" row in the admin. The address is
# the widget's (chat.http.client_ip): REMOTE_ADDR, or behind the proxy the hop it appended to
# X-Forwarded-For; counted at the proxy's address, anyone could lock anyone out (issue 33).
# And per address, any usernames: SLIPSTREAM_LOGIN_ADDRESS_LIMIT failures within the cool-off,
# then every sign-in from there is refused (chat.lockout.address_throttle).
AXES_FAILURE_LIMIT = env.int("SLIPSTREAM_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("SLIPSTREAM_LOGIN_COOLOFF_MIN", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_CLIENT_IP_CALLABLE = "chat.http.client_ip"
SLIPSTREAM_LOGIN_ADDRESS_LIMIT = env.int("SLIPSTREAM_LOGIN_ADDRESS_LIMIT", default=20)
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "chat.lockout.lockout_response"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:index"
LOGOUT_REDIRECT_URL = "login"

# ------------------------------------------------------------------------------------------------
# Content Security Policy (django-csp)
# ------------------------------------------------------------------------------------------------
# The second line of defence behind the Markdown sanitiser: no inline script or style, no
# plugins, no <base>, nothing but our own origin. Pages keep to it: scripts and styles are files
# under static/, data goes in json_script blocks or data-* attributes, htmx's indicator <style>
# is switched off (templates/base.html) and the widget's accent colour is set through the CSSOM
# (static/chat/widget.js). The widget's page replaces frame-ancestors with its allowed origins
# (chat.widget.page). Violations are logged by chat.csp.report.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "object-src": [NONE],
        "base-uri": [NONE],
        # Sign-out's redirect to the provider's end_session_endpoint (chat.sso_session.SignOut)
        # is a form's navigation too: the issuer's origin, when single sign-on is on.
        "form-action": [SELF, *([OIDC_ISSUER_ORIGIN] if OIDC_ISSUER_ORIGIN else [])],
        "frame-ancestors": [NONE],
        "report-uri": ["/csp-report/"],  # chatsite/urls.py
    }
}
# Largest CSP report body, bytes (browsers send well under 2 KiB); bigger ones get 413.
SLIPSTREAM_CSP_REPORT_MAX_BYTES = 8 * 1024
# Reports logged per client address (chat.http.client_ip), as django-ratelimit's rate
# ("count/period", period s, m, h or d); past it they are dropped with a 429. A page breaking
# the policy sends a few per load; the endpoint takes no credentials, so anyone can fill the log.
SLIPSTREAM_CSP_REPORT_RATE = env.str("SLIPSTREAM_CSP_REPORT_RATE", default="60/m")

# ------------------------------------------------------------------------------------------------
# Internationalisation
# ------------------------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TZ", default="UTC")
USE_I18N = True
USE_TZ = True

# ------------------------------------------------------------------------------------------------
# Static files (WhiteNoise)
# ------------------------------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# `manage.py serve` fills it with collectstatic; it exists from the start so WhiteNoise does not
# warn about a missing directory on a fresh checkout.
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Serve straight from the app directories too, so `collectstatic` is not a required step for a
# local install (WhiteNoise's documented development mode).
WHITENOISE_USE_FINDERS = True

# ------------------------------------------------------------------------------------------------
# Slipstream
# ------------------------------------------------------------------------------------------------
# The first-run default slot points at LLM_BASE_URL when set, else at the built-in simulator.
LLM_BASE_URL = env.str("LLM_BASE_URL", default="")
LLM_API_KEY = env.str("LLM_API_KEY", default="")
LLM_MODEL = env.str("LLM_MODEL", default="")
# Fernet keys (comma-separated, urlsafe base64) that encrypt backends' API keys at rest: the
# first encrypts, all decrypt (rotation). Unset: one derived from SECRET_KEY (chat.crypto).
SLIPSTREAM_ENCRYPTION_KEY = env.list("SLIPSTREAM_ENCRYPTION_KEY", default=[])
SIMULATOR_PORT = env.int("SLIPSTREAM_SIMULATOR_PORT", default=8001)
# Largest /v1 request body, bytes; bigger ones get 413. Django's own limit follows it.
# 20 MiB: a few images as base64 data URLs fit (a 3 MB photo is 4 MB of base64).
SLIPSTREAM_API_MAX_BODY_BYTES = env.int("SLIPSTREAM_API_MAX_BODY_BYTES", default=20 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = SLIPSTREAM_API_MAX_BODY_BYTES
# /v1 content parts other than text (image_url, input_audio, file), passed through unchanged:
# at most this many in one request (400), each at most this many bytes (413).
SLIPSTREAM_API_MAX_PARTS = env.int("SLIPSTREAM_API_MAX_PARTS", default=20)
SLIPSTREAM_API_MAX_PART_BYTES = env.int("SLIPSTREAM_API_MAX_PART_BYTES", default=10 * 1024 * 1024)
# Remote URLs in those parts go upstream only as each slot's policy says (Slot.media_urls): by
# default only http(s) URLs whose host resolves to public addresses, since a model server that
# fetches them would otherwise fetch this network's own. Hosts listed here (comma-separated,
# "*.example.org" for its subdomains) skip the address check: an internal image store.
SLIPSTREAM_MEDIA_URL_ALLOW_HOSTS = [
    h.strip().lower().rstrip(".") for h in env.list("SLIPSTREAM_MEDIA_URL_ALLOW_HOSTS", default=[])
]

# MCP servers (chat.tools, issue 31). Stdio servers' command lines come only from here, never
# from the admin: SLIPSTREAM_MCP_STDIO_SERVERS is JSON ({"time": {"command": ["mcp-server-time"],
# "env": {"TZ": "UTC"}}}) or the path of a JSON file the operator owns; read when a server is
# started, so a changed file needs no restart. An http server's host must resolve to public
# addresses unless listed in SLIPSTREAM_MCP_ALLOW_HOSTS (as the media URLs' list: exact, or
# "*.example.org"). A tool's result is cut to SLIPSTREAM_MCP_RESULT_MAX_CHARS characters.
SLIPSTREAM_MCP_STDIO_SERVERS = env.str("SLIPSTREAM_MCP_STDIO_SERVERS", default="")
SLIPSTREAM_MCP_ALLOW_HOSTS = [
    h.strip().lower().rstrip(".") for h in env.list("SLIPSTREAM_MCP_ALLOW_HOSTS", default=[])
]
SLIPSTREAM_MCP_RESULT_MAX_CHARS = env.int("SLIPSTREAM_MCP_RESULT_MAX_CHARS", default=20_000)

# Attachments (chat.attachments): uploaded files, stored through Django's storage API: local
# files under var/media by default; S3-compatible object storage when SLIPSTREAM_S3_BUCKET is
# set (django-storages; credentials from the SLIPSTREAM_S3_* variables or boto3's own chain).
MEDIA_ROOT = env.path("SLIPSTREAM_MEDIA_ROOT", default=VAR_DIR / "media")
SLIPSTREAM_S3_BUCKET = env.str("SLIPSTREAM_S3_BUCKET", default="")
if SLIPSTREAM_S3_BUCKET:
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": SLIPSTREAM_S3_BUCKET,
            "endpoint_url": env.str("SLIPSTREAM_S3_ENDPOINT_URL", default="") or None,
            "region_name": env.str("SLIPSTREAM_S3_REGION", default="") or None,
            "access_key": env.str("SLIPSTREAM_S3_ACCESS_KEY_ID", default="") or None,
            "secret_key": env.str("SLIPSTREAM_S3_SECRET_ACCESS_KEY", default="") or None,
            # Files are served by Slipstream to their owner only, never by a public URL.
            "default_acl": "private",
            "querystring_auth": True,
            "file_overwrite": False,
        },
    }
# Per file, bytes (larger uploads get 413 before their body is read).
SLIPSTREAM_ATTACHMENT_MAX_BYTES = env.int("SLIPSTREAM_ATTACHMENT_MAX_BYTES", default=20 * 2**20)
# Per message: how many files, and their bytes together.
SLIPSTREAM_ATTACHMENT_MAX_COUNT = env.int("SLIPSTREAM_ATTACHMENT_MAX_COUNT", default=10)
SLIPSTREAM_MESSAGE_MAX_BYTES = env.int("SLIPSTREAM_MESSAGE_MAX_BYTES", default=50 * 2**20)
# Stored bytes per user, all their attachments together.
SLIPSTREAM_ATTACHMENT_QUOTA_BYTES = env.int("SLIPSTREAM_ATTACHMENT_QUOTA_BYTES", default=2**30)
# Images: refused above this many pixels before they are decoded (decompression bombs), and
# stored with their longer side at most this long (each slot downscales further as it says).
SLIPSTREAM_IMAGE_MAX_PIXELS = env.int("SLIPSTREAM_IMAGE_MAX_PIXELS", default=50_000_000)
SLIPSTREAM_IMAGE_STORE_MAX_SIDE = env.int("SLIPSTREAM_IMAGE_STORE_MAX_SIDE", default=2048)
# PDF text (chat.extraction): each PDF is read by a process of its own, with this many seconds
# of CPU (past them the pages read so far are kept, or with none the upload is refused as too
# complex) and this much address space (MiB); at most this many at once, the others wait.
SLIPSTREAM_EXTRACT_CPU_S = env.int("SLIPSTREAM_EXTRACT_CPU_S", default=5)
SLIPSTREAM_EXTRACT_MEMORY_MB = env.int("SLIPSTREAM_EXTRACT_MEMORY_MB", default=512)
SLIPSTREAM_EXTRACT_WORKERS = env.int("SLIPSTREAM_EXTRACT_WORKERS", default=2)
# Chat uploads per signed-in user, as django-ratelimit's rate ("count/period", period s, m, h or
# d); past it 429. A widget visitor's uploads count against the widget's message limits.
SLIPSTREAM_UPLOAD_RATE = env.str("SLIPSTREAM_UPLOAD_RATE", default="30/m")
# Slots that send images as links (Slot.image_links): this site's address as the model servers
# reach it, and how long a link works (s).
SLIPSTREAM_PUBLIC_URL = env.str("SLIPSTREAM_PUBLIC_URL", default="")
SLIPSTREAM_IMAGE_LINK_TTL_S = env.int("SLIPSTREAM_IMAGE_LINK_TTL_S", default=300)

# /metrics (chat.ops): with a token set, only requests bearing it ("Authorization: Bearer …");
# otherwise only from these addresses or networks (loopback by default).
SLIPSTREAM_METRICS_TOKEN = env.str("SLIPSTREAM_METRICS_TOKEN", default="")
SLIPSTREAM_METRICS_ALLOW = env.list("SLIPSTREAM_METRICS_ALLOW", default=["127.0.0.1/8", "::1/128"])

# Threads that run requests' synchronous code (the ORM, sync views and middleware), each request
# on one of them (chatsite.asgi.SlipstreamHandler). A request on the hot path makes no such call
# before its first chunk; more threads only help pages that spend long in sync code.
SLIPSTREAM_SYNC_THREADS = env.int("SLIPSTREAM_SYNC_THREADS", default=4)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    # One handler, on the root logger: it replaces the one daphne's command line puts there
    # (keeping daphne's level), so each line is printed once; a second handler on "chat"
    # printed every line twice (issue 12). "chat" still propagates, so pytest's caplog sees it.
    "root": {"handlers": ["console"]},
    "loggers": {
        "chat": {"level": env.str("SLIPSTREAM_LOG_LEVEL", default="INFO")},
        # The MCP SDK and its HTTP client log each request's URL (which may carry a server's
        # token in its query) and each message (tool arguments and results): warnings only
        # (issue 31: secrets never in logs; chat.tools.client logs what is safe).
        "mcp": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "httpcore2": {"level": "WARNING"},
    },
}
# Seconds between SSE keep-alive comments while an answer waits (queue, cold boot, a slow first
# token). The /v1 API holds its HTTP status until the first chunk or the first keep-alive, so a
# failure before then still gets a real 4xx/5xx.
SLIPSTREAM_KEEPALIVE_S = env.float("SLIPSTREAM_KEEPALIVE_S", default=3.0)
# Seconds a process told to stop (SIGTERM) lets its answers in flight run on while it refuses new
# ones (chatsite.server, chat.relay.drain); those still running then are stored interrupted.
# A service manager must wait longer than this before it kills (deploy/ROLLING-RESTART.md).
SLIPSTREAM_DRAIN_S = env.float("SLIPSTREAM_DRAIN_S", default=120.0)
