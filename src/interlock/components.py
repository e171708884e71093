"""The app-lifetime components, built once by ``create_app`` and shared by every request."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from interlock.auth.authenticator import Authenticator
from interlock.auth.tiers import Tiers
from interlock.cache import ResponseCache
from interlock.chat.pipeline import ChatPipeline
from interlock.chat.service import ChatService
from interlock.limits.budgets import Budgets
from interlock.limits.rate_limits import RateLimiter
from interlock.providers.probes import DeploymentProbes
from interlock.providers.registry import ProviderRegistry
from interlock.routing.router import Router
from interlock.settings import Settings
from interlock.state import SharedState
from interlock.store.conversations import ConversationStore
from interlock.store.database import Database
from interlock.store.keys import KeyStore
from interlock.store.users import UserStore
from interlock.telemetry.chat_observer import ChatObserver
from interlock.telemetry.ledger import UsageLedger
from interlock.telemetry.metrics import Metrics
from interlock.telemetry.prices import DeploymentPrices
from interlock.telemetry.request_ids import RequestIds
from interlock.telemetry.sentry import NO_REPORTER, Reporter
from interlock.telemetry.tracing import Tracing


@dataclass(slots=True)
class Components:
    """Built once per app by ``interlock.app.running``."""

    settings: Settings
    database: Database
    state: SharedState
    authenticator: Authenticator
    router: Router
    providers: ProviderRegistry
    service: ChatService
    ledger: UsageLedger  # usage rows, written in batches
    prices: DeploymentPrices  # what each deployment's tokens cost
    keys: KeyStore  # API keys (hashes only)
    users: UserStore
    tiers: Tiers  # the configured tiers, as scopes
    budgets: Budgets  # spend budgets per key and per user
    conversations: ConversationStore  # the AI SDK routes' stored chats
    limiter: RateLimiter  # rate limits per IP, key, user, tier and model
    cache: ResponseCache | None = None  # the response cache; None: none
    request_ids: RequestIds = field(default_factory=RequestIds)
    reporter: Reporter = NO_REPORTER  # Sentry, when SENTRY_DSN is set
    probes: DeploymentProbes | None = None  # reachability of the deployments, for readiness
    metrics: Metrics | None = None  # Prometheus metrics; None: [metrics] enabled = false
    tracing: Tracing | None = None  # OpenTelemetry spans; None: not configured
    pipeline: ChatPipeline = field(init=False)  # every chat request, whatever its protocol

    def __post_init__(self) -> None:
        self.pipeline = ChatPipeline(
            server=self.settings.config.server,
            authenticator=self.authenticator,
            service=self.service,
            budgets=self.budgets,
            limiter=self.limiter,
            ledger=self.ledger,
            prices=self.prices,
            request_ids=self.request_ids,
            cache=self.cache,
            observer=ChatObserver(self.reporter, self.settings.config.logging.prompt_log_users),
            metrics=self.metrics,
            tracing=self.tracing,
        )


def components_of(connection: HTTPConnection) -> Components:
    components: Components = connection.app.state.components
    return components
