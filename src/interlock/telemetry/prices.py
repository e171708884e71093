"""What a request costs: the packaged price table, per-deployment overrides, and the formula.

Prices are data. ``prices.toml`` (shipped in the package, versioned) holds the price of a
million tokens per provider model; a deployment's ``input_price`` / ``output_price`` in
``interlock.toml`` win over it; the embedded ``local`` model costs nothing. Every deployment's
price is resolved once, when the app starts (``DeploymentPrices``), so pricing a request is
one dictionary look-up and a few multiplications::

    cost = (input - cached) * input_price + cached * cached_input_price + output * output_price

all divided by a million. A deployment with no known price costs 0; it is logged once, at
start, and listed in ``DeploymentPrices.unpriced``, never once per request.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any

import structlog

from interlock.settings import DeploymentConfig, ModelConfig

log = structlog.get_logger("interlock.telemetry.prices")

MILLION = Decimal(1_000_000)
_ZERO = Decimal(0)
# A snapshot date at the end of a model name: -2024-08-06 (OpenAI) or -20241022 (Anthropic).
_DATED = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


class PriceTableError(ValueError):
    """The price table is malformed; the message says where."""


@dataclass(frozen=True, slots=True)
class Price:
    """The price of a million tokens of each kind, in the table's currency."""

    input: Decimal
    output: Decimal
    cached_input: Decimal

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int) -> Decimal:
        """What these tokens cost. ``input_tokens`` includes ``cached_tokens``."""
        cached = min(max(cached_tokens, 0), max(input_tokens, 0))
        uncached = max(input_tokens, 0) - cached
        total = (
            uncached * self.input + cached * self.cached_input + max(output_tokens, 0) * self.output
        )
        return total / MILLION


FREE = Price(_ZERO, _ZERO, _ZERO)


@dataclass(frozen=True, slots=True)
class PriceTable:
    """A versioned set of prices, by provider kind and model name."""

    version: str
    currency: str
    prices: Mapping[tuple[str, str], Price]

    def lookup(self, provider: str, model: str) -> Price | None:
        """The price of ``model`` at ``provider``: exact name, else without a snapshot date
        or ``-latest`` suffix; None if the table does not know it."""
        exact = self.prices.get((provider, model))
        if exact is not None:
            return exact
        base = _DATED.sub("", model.removesuffix("-latest"))
        return self.prices.get((provider, base)) if base != model else None


def parse_price_table(text: str, source: str = "price table") -> PriceTable:
    """Parse a price table in the format of the packaged ``prices.toml``."""
    try:
        raw = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise PriceTableError(f"{source}: not valid TOML: {exc}") from None
    version, currency = raw.pop("version", None), raw.pop("currency", None)
    if not isinstance(version, str) or not version:
        raise PriceTableError(f"{source}: `version` must be a non-empty string")
    if not isinstance(currency, str) or not currency:
        raise PriceTableError(f"{source}: `currency` must be a non-empty string")
    prices: dict[tuple[str, str], Price] = {}
    for provider, models in raw.items():
        if not isinstance(models, dict):
            raise PriceTableError(f"{source}: `{provider}` must be a table of models")
        for model, entry in models.items():
            where = f"{source}: {provider}.{model}"
            if not isinstance(entry, dict):
                raise PriceTableError(f"{where}: must be a table")
            price = Price(
                input=_amount(entry, "input", where),
                output=_amount(entry, "output", where),
                cached_input=_amount(entry, "cached_input", where, default=entry.get("input")),
            )
            aliases = entry.get("aliases", [])
            if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
                raise PriceTableError(f"{where}: `aliases` must be a list of names")
            unknown = set(entry) - {"input", "output", "cached_input", "aliases"}
            if unknown:
                raise PriceTableError(f"{where}: unknown keys {sorted(unknown)}")
            for name in (model, *aliases):
                prices[(provider, name)] = price
    return PriceTable(version=version, currency=currency, prices=prices)


def _amount(entry: dict[str, Any], key: str, where: str, default: Any = None) -> Decimal:
    value = entry.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool):
        value = Decimal(value)
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise PriceTableError(f"{where}: `{key}` must be a price of zero or more")
    return value


def packaged_price_table() -> PriceTable:
    """The price table shipped with this version of Interlock."""
    text = resources.files("interlock.telemetry").joinpath("prices.toml").read_text("utf-8")
    return parse_price_table(text, "prices.toml")


@dataclass(frozen=True, slots=True)
class DeploymentPrice:
    """What one deployment is and costs, as the usage ledger records it."""

    provider: str
    price: Price
    known: bool


UNKNOWN_DEPLOYMENT = DeploymentPrice(provider="", price=FREE, known=False)


def _decimal(value: float) -> Decimal:
    # Through str: 0.15 from the config is 0.15, not 0.1499999999999999944488848768742172978818.
    return Decimal(str(value))


def price_deployment(deployment: DeploymentConfig, table: PriceTable) -> DeploymentPrice:
    """The price of one deployment: ``local`` is free, config overrides win over the table.

    With an overridden input price and no cached price anywhere, cached input costs the same
    as uncached input (no discount is assumed); with one in the table, the lower of the two.
    """
    if deployment.provider == "local":
        return DeploymentPrice("local", FREE, known=True)
    listed = table.lookup(deployment.provider, deployment.model)
    if deployment.input_price is None and deployment.output_price is None:
        if listed is None:
            return DeploymentPrice(deployment.provider, FREE, known=False)
        return DeploymentPrice(deployment.provider, listed, known=True)
    input_price = (
        _decimal(deployment.input_price)
        if deployment.input_price is not None
        else (listed.input if listed is not None else None)
    )
    output_price = (
        _decimal(deployment.output_price)
        if deployment.output_price is not None
        else (listed.output if listed is not None else None)
    )
    known = input_price is not None and output_price is not None
    input_price = input_price if input_price is not None else _ZERO
    cached_price = input_price if listed is None else min(listed.cached_input, input_price)
    price = Price(input_price, output_price if output_price is not None else _ZERO, cached_price)
    return DeploymentPrice(deployment.provider, price, known=known)


class DeploymentPrices:
    """Every configured deployment's price, resolved once; the hot path only looks up."""

    def __init__(self, models: Mapping[str, ModelConfig], table: PriceTable) -> None:
        self.table = table
        self._by_name: dict[str, DeploymentPrice] = {}
        unpriced: list[str] = []
        for model in models.values():
            for deployment in model.deployments:
                priced = price_deployment(deployment, table)
                self._by_name[deployment.name] = priced
                if not priced.known:
                    unpriced.append(deployment.name)
        self.unpriced: tuple[str, ...] = tuple(unpriced)
        for name in unpriced:
            # Once per deployment per start: its requests are recorded with a cost of 0.
            log.warning(
                "deployment_unpriced",
                deployment=name,
                price_table=table.version,
                hint="set input_price and output_price on the deployment in interlock.toml",
            )

    @property
    def currency(self) -> str:
        return self.table.currency

    def of(self, deployment_name: str) -> DeploymentPrice:
        """The deployment's provider and price; a free, unknown price for an unknown name."""
        return self._by_name.get(deployment_name, UNKNOWN_DEPLOYMENT)
