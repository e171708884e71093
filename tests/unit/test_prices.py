"""Prices as data: the packaged table, per-deployment overrides, the cost formula, and the
usage record built from what a request produced."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest

from interlock.auth.principal import Principal
from interlock.chat.service import ServedBy
from interlock.chat.types import ChatRequest, Message, TextPart, Usage
from interlock.settings import DeploymentConfig, ModelConfig
from interlock.telemetry.prices import (
    FREE,
    DeploymentPrices,
    Price,
    PriceTable,
    PriceTableError,
    packaged_price_table,
    parse_price_table,
    price_deployment,
)
from interlock.telemetry.usage_record import UsageRecord, record_usage

D = Decimal


def deployment(provider: str = "openai", model: str = "gpt-4o", **extra: Any) -> DeploymentConfig:
    return DeploymentConfig(provider=provider, model=model, **extra)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return packaged_price_table()


# --- the packaged table -----------------------------------------------------------------


def test_the_packaged_table_is_versioned_and_prices_known_models(table: PriceTable) -> None:
    assert table.currency == "USD"
    assert len(table.version) == 10 and table.version[4] == "-"  # a date
    assert table.lookup("openai", "gpt-4o-mini") == Price(D("0.15"), D("0.60"), D("0.075"))
    assert table.lookup("anthropic", "claude-sonnet-4") == Price(D("3.00"), D("15.00"), D("0.30"))
    for price in table.prices.values():
        assert 0 < price.cached_input <= price.input <= price.output


def test_snapshots_aliases_and_latest_names_find_their_base_price(table: PriceTable) -> None:
    base = table.lookup("openai", "gpt-4o")
    assert base is not None
    assert table.lookup("openai", "gpt-4o-2024-08-06") == base
    haiku = table.lookup("anthropic", "claude-3-5-haiku")
    assert haiku is not None
    assert table.lookup("anthropic", "claude-3-5-haiku-20241022") == haiku
    assert table.lookup("anthropic", "claude-3-5-haiku-latest") == haiku
    assert table.lookup("anthropic", "claude-sonnet-4-0") == table.lookup(
        "anthropic", "claude-sonnet-4-20250514"
    )


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "my-finetune"),
        ("openai", "claude-sonnet-4"),  # the right name at the wrong provider
        ("anthropic", "gpt-4o"),
        ("openai", "gpt-4o-2024"),  # not a snapshot date
        ("openai", "gpt-4o-mini-high"),  # a prefix is not a match
        ("local", "smollm2"),
    ],
)
def test_unknown_models_have_no_price(table: PriceTable, provider: str, model: str) -> None:
    assert table.lookup(provider, model) is None


def test_a_missing_cached_price_is_the_input_price(table: PriceTable) -> None:
    price = table.lookup("openai", "gpt-3.5-turbo")
    assert price is not None and price.cached_input == price.input


HEAD = 'version = "1"\ncurrency = "USD"\n'
ENTRY = HEAD + "[openai.x]\ninput = 1\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('currency = "USD"\n', "`version`"),
        ('version = "1"\n', "`currency`"),
        (HEAD + "[openai.x]\ninput = -1\noutput = 1\n", "`input`"),
        (ENTRY, "`output`"),
        (ENTRY + 'output = "2"\n', "`output`"),
        (ENTRY + "output = nan\n", "`output`"),
        (ENTRY + "output = 1\nouptut = 2\n", "ouptut"),
        (ENTRY + 'output = 1\naliases = "y"\n', "aliases"),
        (HEAD + "openai = 3\n", "`openai`"),
        ("version = ", "not valid TOML"),
    ],
)
def test_a_malformed_table_is_refused_with_the_place(text: str, problem: str) -> None:
    with pytest.raises(PriceTableError) as caught:
        parse_price_table(text, "prices.toml")
    assert str(caught.value).startswith("prices.toml")
    assert problem in str(caught.value)


def test_integer_prices_are_accepted() -> None:
    parsed = parse_price_table(
        'version = "v"\ncurrency = "EUR"\n[openai.m]\ninput = 1\noutput = 2\n'
    )
    assert parsed.lookup("openai", "m") == Price(D(1), D(2), D(1))


# --- the formula --------------------------------------------------------------------------


def test_cost_prices_cached_input_at_its_own_rate() -> None:
    price = Price(input=D("2.50"), output=D("10.00"), cached_input=D("1.25"))
    # 800 uncached + 200 cached input, 500 output, per million tokens.
    assert price.cost(1000, 500, 200) == D("0.00725")
    assert price.cost(0, 0, 0) == 0
    assert price.cost(1_000_000, 0, 0) == D("2.5")
    assert price.cost(0, 1_000_000, 0) == D("10")


def test_cost_never_counts_more_cached_tokens_than_input_nor_negative_ones() -> None:
    price = Price(input=D(4), output=D(8), cached_input=D(1))
    assert price.cost(100, 0, 500) == price.cost(100, 0, 100) == D("0.0001")
    assert price.cost(-5, -5, -5) == 0
    assert FREE.cost(10**9, 10**9, 10**6) == 0


# --- deployments: table, overrides, local --------------------------------------------------


def test_the_local_model_is_free(table: PriceTable) -> None:
    priced = price_deployment(DeploymentConfig(provider="local"), table)
    assert (priced.provider, priced.price, priced.known) == ("local", FREE, True)


def test_a_listed_model_takes_the_table_price(table: PriceTable) -> None:
    priced = price_deployment(deployment(model="gpt-4o-2024-11-20"), table)
    assert priced.known and priced.price == table.lookup("openai", "gpt-4o")


def test_config_prices_override_the_table(table: PriceTable) -> None:
    priced = price_deployment(deployment(input_price=1.1, output_price=0.3), table)
    # Exact decimals from the config's floats; cached input no dearer than input.
    assert priced.price == Price(D("1.1"), D("0.3"), D("1.1"))
    cheaper = price_deployment(deployment(input_price=5.0, output_price=20.0), table)
    assert cheaper.price.cached_input == D("1.25")  # the table's cache price still applies


def test_one_overridden_price_keeps_the_table_price_of_the_other(table: PriceTable) -> None:
    priced = price_deployment(deployment(model="gpt-4o-mini", output_price=1.0), table)
    assert priced.known
    assert priced.price == Price(D("0.15"), D("1.0"), D("0.075"))


def test_an_unlisted_model_is_priced_by_config_or_not_at_all(table: PriceTable) -> None:
    both = price_deployment(
        deployment(model="vllm-llama", input_price=0.2, output_price=0.4), table
    )
    assert both.known and both.price == Price(D("0.2"), D("0.4"), D("0.2"))
    half = price_deployment(deployment(model="vllm-llama", input_price=0.2), table)
    assert not half.known and half.price.output == 0
    unknown = price_deployment(deployment(model="vllm-llama"), table)
    assert not unknown.known and unknown.price == FREE


def test_deployment_prices_resolve_once_and_list_the_unpriced(table: PriceTable) -> None:
    models = {
        "smart": ModelConfig(deployments=[deployment(name="a", model="gpt-4o")]),
        "custom": ModelConfig(
            deployments=[
                deployment(name="b", model="in-house"),
                deployment(name="c", model="in-house", input_price=1, output_price=2),
            ]
        ),
    }
    prices = DeploymentPrices(models, table)
    assert prices.unpriced == ("b",)
    assert prices.currency == "USD"
    assert prices.of("a").price == table.lookup("openai", "gpt-4o")
    assert prices.of("c").known and prices.of("c").provider == "openai"
    missing = prices.of("no-such-deployment")
    assert (missing.provider, missing.price, missing.known) == ("", FREE, False)


# --- the record of a request ------------------------------------------------------------

ADA = Principal(user_id="u1", user_name="ada", role="member", tier="premium", key_id="k1")


class Sink:
    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def record(self, record: UsageRecord) -> None:
        self.records.append(record)


@pytest.fixture
def prices(table: PriceTable) -> DeploymentPrices:
    models = {"smart": ModelConfig(deployments=[deployment(name="dep", model="gpt-4o")])}
    return DeploymentPrices(models, table)


def chat(text: str) -> ChatRequest:
    return ChatRequest(model="smart", messages=[Message(role="user", content=[TextPart(text)])])


def test_a_complete_answer_is_billed_from_the_provider_counts(prices: DeploymentPrices) -> None:
    sink = Sink()
    started = time.perf_counter() - 0.25
    record = record_usage(
        sink,
        prices,
        request_id="req_1",
        principal=ADA,
        model="smart",
        started=started,
        status=200,
        streaming=True,
        request=chat("hello"),
        served=ServedBy(model="smart", deployment="dep", attempts=2),
        usage=Usage(input_tokens=1000, output_tokens=500, cached_tokens=200),
        first_token_at=started + 0.1,
    )
    assert sink.records == [record]
    assert (record.user_id, record.key_id, record.tier) == ("u1", "k1", "premium")
    assert (record.model, record.provider, record.deployment) == ("smart", "openai", "dep")
    assert (record.input_tokens, record.output_tokens, record.cached_tokens) == (1000, 500, 200)
    assert record.cost == D("0.00725")
    assert (record.usage_source, record.partial, record.status, record.error) == (
        "provider",
        False,
        200,
        None,
    )
    assert record.attempts == 2 and record.streaming and not record.cache_hit
    assert record.ttft_ms == 100
    assert 250 <= record.latency_ms < 1000
    assert record.created_at.tzinfo is not None


def test_an_estimate_from_the_pipeline_is_flagged(prices: DeploymentPrices) -> None:
    record = record_usage(
        Sink(),
        prices,
        request_id="req_2",
        principal=ADA,
        model="smart",
        started=time.perf_counter(),
        status=200,
        streaming=False,
        served=ServedBy(deployment="dep", attempts=1),
        usage=Usage(input_tokens=10, output_tokens=4, estimated=True),
    )
    assert record.usage_source == "estimated" and not record.partial
    assert record.ttft_ms is None
    assert record.cost == D("0.000065")  # 10 * 2.5 + 4 * 10, per million


def test_a_cut_stream_is_partial_and_counts_what_was_delivered(prices: DeploymentPrices) -> None:
    record = record_usage(
        Sink(),
        prices,
        request_id="req_3",
        principal=ADA,
        model="smart",
        started=time.perf_counter(),
        status=499,
        streaming=True,
        request=chat("x" * 40),
        served=ServedBy(deployment="dep", attempts=1, committed=True),
        output_chars=18,
        error="client_disconnected",
        partial=True,
    )
    assert (record.input_tokens, record.output_tokens) == (10, 5)  # ~4 characters a token
    assert record.usage_source == "estimated" and record.partial
    assert (record.status, record.error) == (499, "client_disconnected")
    assert record.cost == D("0.000075")


def test_a_request_refused_by_its_deployment_bills_no_tokens(prices: DeploymentPrices) -> None:
    record = record_usage(
        Sink(),
        prices,
        request_id="req_5",
        principal=ADA,
        model="smart",
        request=chat("x" * 40),
        started=time.perf_counter(),
        status=502,
        streaming=False,
        served=ServedBy(model="smart", deployment="dep", attempts=2),  # tried, never answered
        error="upstream_auth_failed",
    )
    assert (record.input_tokens, record.output_tokens, record.cost) == (0, 0, 0)
    assert (record.deployment, record.provider, record.attempts) == ("dep", "openai", 2)


def test_a_request_that_reached_no_deployment_costs_nothing(prices: DeploymentPrices) -> None:
    record = record_usage(
        Sink(),
        prices,
        request_id="req_4",
        principal=ADA,
        model="m" * 10_000,  # from the request body: anything
        started=time.perf_counter(),
        status=502,
        streaming=False,
        request=chat("hello " * 100),
        error="upstream_auth_failed_" * 10,
    )
    assert (record.input_tokens, record.output_tokens, record.cost) == (0, 0, 0)
    assert (record.provider, record.deployment, record.attempts) == ("", "", 0)
    assert len(record.model) == 200 and record.error is not None and len(record.error) == 64


def test_a_cache_hit_keeps_the_stored_usage_and_costs_nothing(prices: DeploymentPrices) -> None:
    record = record_usage(
        Sink(),
        prices,
        request_id="req_6",
        principal=ADA,
        model="smart",
        started=time.perf_counter(),
        status=200,
        streaming=True,
        request=chat("hello"),
        served=ServedBy(model="gpt-4o", deployment="dep", attempts=0, committed=True),
        usage=Usage(input_tokens=1000, output_tokens=500, cached_tokens=200),
        cache_hit=True,
    )
    assert (record.input_tokens, record.output_tokens, record.cached_tokens) == (1000, 500, 200)
    assert record.cache_hit
    assert record.cost == 0
    assert (record.deployment, record.attempts) == ("dep", 0)
