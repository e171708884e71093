"""Settings: the environment and ``interlock.toml`` turned into typed, validated objects.

This is the only module that reads the environment. Secrets and deployment facts come from
environment variables; models, deployments, tiers and route timeouts from the TOML file
(whose schema is ``interlock.config_file``).
A bad value becomes one ``ConfigProblem`` per problem (setting name + what is wrong), never a
traceback. With no file, the embedded defaults apply: one public model, ``local``, served by
the bundled SmolLM2 model.
"""

from __future__ import annotations

import base64
import binascii
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from interlock.config_base import PositiveSeconds
from interlock.config_file import (  # re-exported: settings is where callers look
    BUDGET_DECIMAL_PLACES,
    DEFAULT_BASE_URLS,
    DEFAULT_KEY_ENVS,
    MAX_BUDGET,
    MAX_CONCURRENT,
    MAX_RPM,
    MAX_TPM,
    TIER_NAME,
    AuthConfig,
    BreakerConfig,
    ConfigError,
    DeploymentConfig,
    FileConfig,
    HealthConfig,
    LimitsConfig,
    LocalModelConfig,
    LoggingConfig,
    MetricsConfig,
    ModelConfig,
    ProviderKind,
    RateConfig,
    RetryConfig,
    RoutingConfig,
    ServerConfig,
    StateFailure,
    TierConfig,
    TimeoutConfig,
    TracingConfig,
    UsageConfig,
    default_file_config,
    default_tiers,
    load_file_config,
)
from interlock.config_lifecycle import BackupConfig, S3Config

__all__ = [
    "BUDGET_DECIMAL_PLACES",
    "DEFAULT_BASE_URLS",
    "DEFAULT_KEY_ENVS",
    "MAX_BUDGET",
    "MAX_CONCURRENT",
    "MAX_RPM",
    "MAX_TPM",
    "TIER_NAME",
    "AuthConfig",
    "BackupConfig",
    "BackupSecrets",
    "BreakerConfig",
    "ConfigError",
    "DatabasePool",
    "DeploymentConfig",
    "FileConfig",
    "HealthConfig",
    "JwtSettings",
    "LimitsConfig",
    "LocalModelConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ModelConfig",
    "PositiveSeconds",
    "ProviderKind",
    "RateConfig",
    "RetryConfig",
    "RoutingConfig",
    "S3Config",
    "SentrySettings",
    "ServerConfig",
    "Settings",
    "StateFailure",
    "TierConfig",
    "TimeoutConfig",
    "TracingConfig",
    "TracingSettings",
    "UsageConfig",
    "default_file_config",
    "default_tiers",
    "load_file_config",
    "load_settings",
]

SYMMETRIC_ALGORITHMS = ("HS256", "HS384", "HS512")
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
MIN_JWT_SECRET_LENGTH = 32
_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """How browser sessions (JWTs) are verified. Present only when a key source is set."""

    secret: str | None  # HS*: INTERLOCK_JWT_SECRET, or NEXTAUTH_SECRET
    jwks_url: str | None  # RS*/PS*/ES*/EdDSA: the identity provider's key set
    algorithms: tuple[str, ...]
    audience: tuple[str, ...]  # empty: tokens must carry no `aud`
    issuer: str | None
    create_users: bool
    leeway: float

    def __repr__(self) -> str:  # never show the secret
        return (
            f"JwtSettings(jwks_url={self.jwks_url!r}, algorithms={self.algorithms!r}, "
            f"audience={self.audience!r}, issuer={self.issuer!r}, "
            f"create_users={self.create_users!r}, secret={'***' if self.secret else None})"
        )


@dataclass(frozen=True, slots=True)
class DatabasePool:
    """Connection pool of an external database (SQLite ignores it)."""

    size: int = 5
    max_overflow: int = 10
    timeout: float = 30.0  # seconds to wait for a free connection
    recycle: float = 1800.0  # seconds before a connection is replaced


BACKUP_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class BackupSecrets:
    """Keys that encrypt backups, and the object store's credentials, from the environment."""

    key: bytes | None = None  # INTERLOCK_BACKUP_KEY; None: derived from the server secret
    old_keys: tuple[bytes, ...] = ()  # INTERLOCK_BACKUP_OLD_KEYS: still decrypt, never encrypt
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_session_token: str | None = None

    def __repr__(self) -> str:  # never show a key
        return (
            f"BackupSecrets(key={'***' if self.key else None}, old_keys={len(self.old_keys)}, "
            f"s3_access_key_id={self.s3_access_key_id!r})"
        )


@dataclass(frozen=True, slots=True)
class SentrySettings:
    """Error reporting to Sentry: present only when ``SENTRY_DSN`` is set."""

    dsn: str
    environment: str | None  # SENTRY_ENVIRONMENT
    traces_sample_rate: float  # SENTRY_TRACES_SAMPLE_RATE; 0: errors only

    def __repr__(self) -> str:  # the DSN holds the project's key
        return (
            f"SentrySettings(dsn='***', environment={self.environment!r}, "
            f"traces_sample_rate={self.traces_sample_rate!r})"
        )


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """Where traces go (OTLP over HTTP/protobuf). Present only when tracing is on."""

    endpoint: str  # the OTLP/HTTP traces URL, ending in /v1/traces
    headers: Mapping[str, str]  # sent with every export (often a token)
    service_name: str
    sample_ratio: float  # of traces started here; a caller's sampled traceparent is followed

    def __repr__(self) -> str:  # never show the headers: they usually hold a token
        return (
            f"TracingSettings(endpoint={self.endpoint!r}, headers={sorted(self.headers)!r}, "
            f"service_name={self.service_name!r}, sample_ratio={self.sample_ratio!r})"
        )


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the app needs, validated. Built once and passed down."""

    host: str
    port: int
    data_dir: Path
    database_url: str
    database_pool: DatabasePool
    redis_url: str | None  # None: shared state lives in this process
    config_path: Path | None
    config: FileConfig
    # Never in a repr (a log line or a traceback may show one): secrets, and the environment.
    secret: str | None = field(repr=False)  # INTERLOCK_SECRET; None: the data dir keeps one
    admin_key: str | None = field(repr=False)
    insecure_no_auth: bool
    jwt: JwtSettings | None  # None: no browser sessions, API keys only
    log_level: str
    log_format: Literal["json", "console"]
    environ: Mapping[str, str] = field(repr=False)  # for api_key_env look-ups, read once
    backup: BackupSecrets = BackupSecrets()
    sentry: SentrySettings | None = None  # None: errors are not reported to Sentry
    metrics_token: str | None = None  # INTERLOCK_METRICS_TOKEN: scrapes from anywhere with it
    metrics_multiproc_dir: Path | None = None  # PROMETHEUS_MULTIPROC_DIR: processes share it
    tracing: TracingSettings | None = None  # None: no spans are made at all

    @property
    def is_embedded_database(self) -> bool:
        return self.database_url.startswith("sqlite")

    def api_key_for(self, deployment: DeploymentConfig) -> str | None:
        if not deployment.api_key_env:
            return None
        return self.environ.get(deployment.api_key_env) or None


_LOG_LEVELS = ("debug", "info", "warning", "error")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    config_path: Path | None = None,
) -> Settings:
    """Read the environment (and the config file it names) into ``Settings``.

    Raises ``ConfigError`` with one line per problem found, having looked at everything.
    """
    env = dict(os.environ if environ is None else environ)
    problems: list[str] = []

    def flag(name: str) -> bool:
        value = env.get(name, "").strip().lower()
        if value in _TRUE:
            return True
        if value not in _FALSE:
            problems.append(f"{name}: expected true or false, got {value!r}")
        return False

    host = host or env.get("INTERLOCK_HOST", "127.0.0.1")
    if port is None:
        raw_port = env.get("INTERLOCK_PORT", "8080")
        try:
            port = int(raw_port)
        except ValueError:
            problems.append(f"INTERLOCK_PORT: expected a port number, got {raw_port!r}")
            port = 8080
    if not 0 < port < 65536:
        problems.append(f"INTERLOCK_PORT: {port} is not a port number (1-65535)")

    data_dir = Path(env.get("INTERLOCK_DATA_DIR", "./data"))
    database_url = env.get("DATABASE_URL", "").strip()
    if not database_url:
        database_url = f"sqlite+aiosqlite:///{data_dir / 'interlock.db'}"
    else:
        database_url = _normalise_database_url(database_url, problems)

    database_pool = DatabasePool(
        size=int(_number(env, "DATABASE_POOL_SIZE", 5, 1, 1000, problems)),
        max_overflow=int(_number(env, "DATABASE_MAX_OVERFLOW", 10, 0, 1000, problems)),
        timeout=_number(env, "DATABASE_POOL_TIMEOUT", 30.0, 0.1, 600, problems),
        recycle=_number(env, "DATABASE_POOL_RECYCLE", 1800.0, 1, 86_400, problems),
    )
    redis_url = env.get("REDIS_URL", "").strip() or None
    if redis_url is not None and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        problems.append("REDIS_URL: expected a redis://, rediss:// or unix:// URL")

    secret = env.get("INTERLOCK_SECRET") or None
    if secret is not None and len(secret) < 32:
        problems.append("INTERLOCK_SECRET: must be at least 32 characters")
    if secret is None and not database_url.startswith("sqlite"):
        problems.append(
            "INTERLOCK_SECRET: required with an external DATABASE_URL, so that every "
            "instance hashes API keys alike (generate one: `interlock secret`)"
        )
    admin_key = env.get("INTERLOCK_ADMIN_KEY") or None
    if admin_key is not None and not (
        24 <= len(admin_key) <= 512 and admin_key.isascii() and admin_key.isprintable()
    ):
        problems.append("INTERLOCK_ADMIN_KEY: must be 24 to 512 printable ASCII characters")

    log_level = env.get("INTERLOCK_LOG_LEVEL", "info").lower()
    if log_level not in _LOG_LEVELS:
        problems.append(f"INTERLOCK_LOG_LEVEL: expected one of {', '.join(_LOG_LEVELS)}")
        log_level = "info"
    # Unset: readable lines for a person at a terminal, JSON lines for whatever collects them.
    log_format = env.get("INTERLOCK_LOG_FORMAT", "").strip().lower() or (
        "console" if sys.stderr.isatty() else "json"
    )
    if log_format not in ("json", "console"):
        problems.append("INTERLOCK_LOG_FORMAT: expected json or console")
        log_format = "console"

    insecure_no_auth = flag("INTERLOCK_INSECURE_NO_AUTH")

    if config_path is None and env.get("INTERLOCK_CONFIG"):
        config_path = Path(env["INTERLOCK_CONFIG"])
    if config_path is None and Path("interlock.toml").is_file():
        config_path = Path("interlock.toml")
    config = default_file_config()
    if config_path is not None:
        try:
            config = load_file_config(config_path)
        except ConfigError as exc:
            problems.extend(exc.problems)
        else:
            for model_name, model in config.models.items():
                for deployment in model.deployments:
                    if deployment.api_key_env and not env.get(deployment.api_key_env):
                        problems.append(
                            f"{deployment.api_key_env}: not set, but deployment "
                            f"{deployment.name!r} of model {model_name!r} needs it"
                        )
    jwt = _jwt_settings(env, problems, flag, leeway=config.auth.session_leeway)
    backup = _backup_secrets(env, problems)
    sentry = _sentry_settings(env, problems)
    metrics_token, multiproc_dir = _metrics_settings(env, problems)
    tracing = _tracing_settings(env, config.tracing, problems)
    if problems:
        raise ConfigError(problems)
    return Settings(
        host=host,
        port=port,
        data_dir=data_dir,
        database_url=database_url,
        database_pool=database_pool,
        redis_url=redis_url,
        config_path=config_path,
        config=config,
        secret=secret,
        admin_key=admin_key,
        insecure_no_auth=insecure_no_auth,
        jwt=jwt,
        log_level=log_level,
        log_format=log_format,  # type: ignore[arg-type]
        environ=env,
        backup=backup,
        sentry=sentry,
        metrics_token=metrics_token,
        metrics_multiproc_dir=multiproc_dir,
        tracing=tracing,
    )


def _sentry_settings(env: Mapping[str, str], problems: list[str]) -> SentrySettings | None:
    """Sentry's settings, or None without ``SENTRY_DSN``. Never echoes the DSN."""
    dsn = env.get("SENTRY_DSN", "").strip()
    environment = env.get("SENTRY_ENVIRONMENT", "").strip() or None
    rate = _number(env, "SENTRY_TRACES_SAMPLE_RATE", 0.0, 0.0, 1.0, problems)
    if not dsn:
        return None
    try:
        parts = urlsplit(dsn)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname and parts.username)
    except ValueError:
        valid = False
    if not valid:
        problems.append("SENTRY_DSN: expected a DSN, https://<key>@<host>/<project>")
        return None
    return SentrySettings(dsn=dsn, environment=environment, traces_sample_rate=rate)


def _backup_secrets(env: Mapping[str, str], problems: list[str]) -> BackupSecrets:
    """The backup keys (base64 of 32 bytes each) and S3 credentials. Never echoes a key."""

    def decode(name: str, value: str) -> bytes | None:
        try:
            key = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            problems.append(f"{name}: not base64 (generate a key: `interlock backup keygen`)")
            return None
        if len(key) != BACKUP_KEY_BYTES:
            problems.append(f"{name}: must be {BACKUP_KEY_BYTES} bytes, base64-encoded")
            return None
        return key

    raw_key = env.get("INTERLOCK_BACKUP_KEY", "").strip()
    key = decode("INTERLOCK_BACKUP_KEY", raw_key) if raw_key else None
    old_keys: list[bytes] = []
    for part in env.get("INTERLOCK_BACKUP_OLD_KEYS", "").split(","):
        if part.strip() and (old := decode("INTERLOCK_BACKUP_OLD_KEYS", part)) is not None:
            old_keys.append(old)
    access_key = (
        env.get("INTERLOCK_BACKUP_S3_ACCESS_KEY_ID") or env.get("AWS_ACCESS_KEY_ID") or None
    )
    secret_key = (
        env.get("INTERLOCK_BACKUP_S3_SECRET_ACCESS_KEY") or env.get("AWS_SECRET_ACCESS_KEY") or None
    )
    session_token = (
        env.get("INTERLOCK_BACKUP_S3_SESSION_TOKEN") or env.get("AWS_SESSION_TOKEN") or None
    )
    if (access_key is None) != (secret_key is None):
        problems.append(
            "INTERLOCK_BACKUP_S3_ACCESS_KEY_ID and INTERLOCK_BACKUP_S3_SECRET_ACCESS_KEY: "
            "set both or neither"
        )
    return BackupSecrets(
        key=key,
        old_keys=tuple(old_keys),
        s3_access_key_id=access_key,
        s3_secret_access_key=secret_key,
        s3_session_token=session_token,
    )


def _metrics_settings(
    env: Mapping[str, str], problems: list[str]
) -> tuple[str | None, Path | None]:
    """The scrape token and the multi-process metrics directory. Never echoes the token."""
    token = env.get("INTERLOCK_METRICS_TOKEN") or None
    if token is not None and not (
        16 <= len(token) <= 512 and token.isascii() and token.isprintable() and " " not in token
    ):
        problems.append(
            "INTERLOCK_METRICS_TOKEN: must be 16 to 512 printable ASCII characters, no spaces"
        )
    raw_dir = env.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    multiproc_dir = Path(raw_dir) if raw_dir else None
    if multiproc_dir is not None and not multiproc_dir.is_dir():
        problems.append("PROMETHEUS_MULTIPROC_DIR: not an existing directory")
    return token, multiproc_dir


def _otlp_headers(raw: str, name: str, problems: list[str]) -> dict[str, str]:
    """``key1=value1,key2=value2`` (values URL-encoded), as the OTLP exporters read it."""
    headers: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"{name}: expected key=value pairs separated by commas")
            return {}
        headers[unquote(key.strip()).lower()] = unquote(value.strip())
    return headers


def _tracing_settings(
    env: Mapping[str, str], config: TracingConfig, problems: list[str]
) -> TracingSettings | None:
    """Tracing is on when an OTLP endpoint is known (the standard variables, else
    ``[tracing] endpoint``) and nothing turns it off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" or not config.enabled:
        return None
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return None
    if exporter not in ("", "otlp"):
        problems.append("OTEL_TRACES_EXPORTER: only otlp (or none) is supported")
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(name, "").strip()
        if protocol and protocol != "http/protobuf":
            problems.append(f"{name}: only http/protobuf is supported")
            break
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not endpoint and base:
        endpoint = base.rstrip("/") + "/v1/traces"  # the signal path is added to the base
    if not endpoint:
        endpoint = config.endpoint
    if not endpoint:
        return None
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append("OTEL_EXPORTER_OTLP_ENDPOINT: expected an http:// or https:// URL")
    headers_name = "OTEL_EXPORTER_OTLP_TRACES_HEADERS"
    raw_headers = env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "")
    if not raw_headers:
        headers_name, raw_headers = (
            "OTEL_EXPORTER_OTLP_HEADERS",
            env.get("OTEL_EXPORTER_OTLP_HEADERS", ""),
        )
    return TracingSettings(
        endpoint=endpoint,
        headers=_otlp_headers(raw_headers, headers_name, problems),
        service_name=env.get("OTEL_SERVICE_NAME", "").strip() or config.service_name,
        sample_ratio=config.sample_ratio,
    )


def _jwt_settings(
    env: Mapping[str, str], problems: list[str], flag: Callable[[str], bool], *, leeway: float
) -> JwtSettings | None:
    """The session settings from the environment, or None when no key source is set.

    Secrets are never echoed back in a problem line.
    """
    secret_name = "INTERLOCK_JWT_SECRET" if env.get("INTERLOCK_JWT_SECRET") else "NEXTAUTH_SECRET"
    secret = env.get("INTERLOCK_JWT_SECRET") or env.get("NEXTAUTH_SECRET") or None
    if secret is not None and len(secret) < MIN_JWT_SECRET_LENGTH:
        problems.append(f"{secret_name}: must be at least {MIN_JWT_SECRET_LENGTH} characters")
    jwks_url = env.get("INTERLOCK_JWKS_URL", "").strip() or None
    if jwks_url is not None:
        parts = urlsplit(jwks_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append("INTERLOCK_JWKS_URL: expected an https:// URL")
        elif parts.username or parts.password:
            problems.append("INTERLOCK_JWKS_URL: must not carry credentials")
        elif parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
            # Keys fetched in clear could be swapped on the way: anyone could mint sessions.
            problems.append("INTERLOCK_JWKS_URL: must be https:// (http:// only on loopback)")
    create_users = flag("INTERLOCK_JWT_CREATE_USERS")
    raw_algorithms = env.get("INTERLOCK_JWT_ALGORITHMS", "").strip()
    audience = tuple(
        part.strip() for part in env.get("INTERLOCK_JWT_AUDIENCE", "").split(",") if part.strip()
    )
    issuer = env.get("INTERLOCK_JWT_ISSUER", "").strip() or None
    if secret is None and jwks_url is None:
        if raw_algorithms or audience or issuer or create_users:
            problems.append(
                "INTERLOCK_JWT_SECRET or INTERLOCK_JWKS_URL: needed to verify sessions "
                "(other INTERLOCK_JWT_* variables are set)"
            )
        return None
    if raw_algorithms:
        algorithms = tuple(part.strip() for part in raw_algorithms.split(",") if part.strip())
    else:
        algorithms = (SYMMETRIC_ALGORITHMS[:1] if secret else ()) + (
            ("RS256", "ES256") if jwks_url else ()
        )
    for algorithm in algorithms:
        if algorithm in SYMMETRIC_ALGORITHMS:
            if secret is None:
                problems.append(
                    f"INTERLOCK_JWT_ALGORITHMS: {algorithm} needs INTERLOCK_JWT_SECRET "
                    "(or NEXTAUTH_SECRET)"
                )
            elif len(secret.encode()) < int(algorithm[2:]) // 8:
                # A shorter HMAC key is refused at every verification (RFC 7518, 3.2).
                problems.append(
                    f"INTERLOCK_JWT_ALGORITHMS: {algorithm} needs a secret of at least "
                    f"{int(algorithm[2:]) // 8} bytes in {secret_name}"
                )
        elif algorithm in ASYMMETRIC_ALGORITHMS:
            if jwks_url is None:
                problems.append(f"INTERLOCK_JWT_ALGORITHMS: {algorithm} needs INTERLOCK_JWKS_URL")
        else:
            shown = algorithm if algorithm.isascii() and algorithm.isprintable() else "?"
            problems.append(
                f"INTERLOCK_JWT_ALGORITHMS: {shown[:20]!r} is not an allowed algorithm "
                f"(use {', '.join(SYMMETRIC_ALGORITHMS + ASYMMETRIC_ALGORITHMS)})"
            )
    return JwtSettings(
        secret=secret,
        jwks_url=jwks_url,
        algorithms=algorithms,
        audience=audience,
        issuer=issuer,
        create_users=create_users,
        leeway=leeway,
    )


def _normalise_database_url(url: str, problems: list[str]) -> str:
    """Accept the URLs people paste (``postgres://``, ``postgresql://``, ``sqlite:///``) and
    pick the async driver. Never echo the URL back: it may hold a password."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        problems.append("DATABASE_URL: not a URL (expected postgresql://… or sqlite:///…)")
        return url
    scheme = scheme.lower()
    if scheme in ("postgres", "postgresql", "postgresql+asyncpg"):
        return f"postgresql+asyncpg://{rest}"
    if scheme in ("sqlite", "sqlite+aiosqlite"):
        return f"sqlite+aiosqlite://{rest}"
    problems.append(f"DATABASE_URL: unsupported scheme {scheme!r} (use postgresql or sqlite)")
    return url


def _number(
    env: Mapping[str, str],
    name: str,
    default: float,
    low: float,
    high: float,
    problems: list[str],
) -> float:
    """A number from the environment within [low, high]; a problem line otherwise."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw) if isinstance(default, float) else int(raw)
    except ValueError:
        problems.append(f"{name}: expected a number, got {raw!r}")
        return default
    if not low <= value <= high:
        problems.append(f"{name}: must be between {low:g} and {high:g}, got {raw}")
        return default
    return value
