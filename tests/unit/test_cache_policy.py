"""The cache policy: deterministic requests only by default; per model; per request."""

from __future__ import annotations

from pathlib import Path

import pytest

from interlock.cache.policy import CacheDirective, CacheRule, decide, is_deterministic
from interlock.chat.types import ChatRequest, Message, TextPart
from interlock.config_file import CacheConfig, CacheModelConfig, ConfigError, load_file_config
from interlock.errors import InvalidRequest


def chat(model: str = "gpt", **options: object) -> ChatRequest:
    return ChatRequest(model, [Message("user", [TextPart("hi")])], **options)  # type: ignore[arg-type]


READ_WRITE = CacheRule(read=True, write=True, ttl=3600.0)


@pytest.mark.parametrize(
    ("options", "deterministic"),
    [
        ({"temperature": 0.0}, True),
        ({"temperature": 0}, True),
        ({"seed": 42}, True),
        ({"seed": 0, "temperature": 1.0}, True),
        ({}, False),  # the provider's default temperature samples
        ({"temperature": 0.7}, False),
        ({"temperature": 1e-9}, False),
        ({"top_p": 0.0}, False),
    ],
)
def test_only_deterministic_requests_are_cached_by_default(
    options: dict[str, object], deterministic: bool
) -> None:
    request = chat(**options)
    assert is_deterministic(request) is deterministic
    rule = decide(CacheConfig(), request)
    if deterministic:
        assert rule == READ_WRITE
    else:
        assert rule.bypass
        assert rule.reason == "not_deterministic"


def test_an_operator_may_cache_sampled_answers_too() -> None:
    assert decide(CacheConfig(deterministic_only=False), chat(temperature=0.9)) == READ_WRITE


def test_no_cache_skips_the_read_but_may_write_and_no_store_does_neither() -> None:
    request = chat(temperature=0)
    no_cache = decide(CacheConfig(), request, CacheDirective.NO_CACHE)
    assert (no_cache.read, no_cache.write, no_cache.reason) == (False, True, "no-cache")
    no_store = decide(CacheConfig(), request, CacheDirective.NO_STORE)
    assert (no_store.read, no_store.write, no_store.reason) == (False, False, "no-store")
    assert no_store.bypass


def test_a_caller_cannot_ask_for_more_caching_than_configured() -> None:
    disabled = decide(CacheConfig(enabled=False), chat(temperature=0), CacheDirective.DEFAULT)
    assert disabled.bypass
    assert disabled.reason == "disabled"
    sampled = decide(CacheConfig(), chat(temperature=1.0), CacheDirective.DEFAULT)
    assert sampled.bypass


def test_a_model_overrides_the_defaults() -> None:
    config = CacheConfig(
        ttl=60,
        models={
            "fast": CacheModelConfig(ttl=5),
            "off": CacheModelConfig(enabled=False),
            "creative": CacheModelConfig(deterministic_only=False),
        },
    )
    assert decide(config, chat("gpt", seed=1)).ttl == 60
    assert decide(config, chat("fast", seed=1)) == CacheRule(True, True, 5.0)
    off = decide(config, chat("off", seed=1))
    assert off.bypass
    assert off.reason == "model_disabled"
    assert decide(config, chat("creative", temperature=1.0)) == CacheRule(True, True, 60.0)
    assert decide(config, chat("gpt", temperature=1.0)).bypass
    # a model can be switched on when the cache is off by default
    only_fast = CacheConfig(enabled=False, models={"fast": CacheModelConfig(enabled=True)})
    assert not decide(only_fast, chat("fast", seed=1)).bypass
    assert decide(only_fast, chat("gpt", seed=1)).bypass


@pytest.mark.parametrize(
    ("header", "directive"),
    [
        (None, CacheDirective.DEFAULT),
        ("", CacheDirective.DEFAULT),
        ("max-age=60", CacheDirective.DEFAULT),
        ("no-cache", CacheDirective.NO_CACHE),
        ("No-Cache", CacheDirective.NO_CACHE),
        ("max-age=0", CacheDirective.NO_CACHE),
        ('max-age="0"', CacheDirective.NO_CACHE),
        ("no-store", CacheDirective.NO_STORE),
        ("no-cache, no-store", CacheDirective.NO_STORE),
        ("max-age=10 , NO-STORE", CacheDirective.NO_STORE),
        ("no-transform", CacheDirective.DEFAULT),
    ],
)
def test_cache_control_request_headers(header: str | None, directive: CacheDirective) -> None:
    assert CacheDirective.from_header(header) is directive


@pytest.mark.parametrize(
    ("value", "directive"),
    [
        (None, CacheDirective.DEFAULT),
        (True, CacheDirective.DEFAULT),
        ("default", CacheDirective.DEFAULT),
        (False, CacheDirective.NO_STORE),
        ("no-store", CacheDirective.NO_STORE),
        ("NO-CACHE", CacheDirective.NO_CACHE),
    ],
)
def test_the_body_field(value: object, directive: CacheDirective) -> None:
    assert CacheDirective.from_body(value) is directive


@pytest.mark.parametrize("value", ["sometimes", 0, 1, {"no": "store"}, []])
def test_a_bad_body_field_is_the_callers_mistake(value: object) -> None:
    with pytest.raises(InvalidRequest) as caught:
        CacheDirective.from_body(value, param="interlock.cache")
    assert caught.value.param == "interlock.cache"
    assert caught.value.status == 400


def test_the_stricter_directive_wins() -> None:
    assert CacheDirective.NO_CACHE.combine(CacheDirective.NO_STORE) is CacheDirective.NO_STORE
    assert CacheDirective.DEFAULT.combine(CacheDirective.NO_CACHE) is CacheDirective.NO_CACHE
    assert CacheDirective.NO_CACHE.combine(CacheDirective.DEFAULT) is CacheDirective.NO_CACHE


def test_the_cache_section_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "interlock.toml"
    path.write_text(
        '[models.gpt]\ndeployments = [{provider = "openai", model = "gpt-4o"}]\n'
        '[cache]\nscope = "everyone"\nttl = 0\nmax_entry_bytes = 10\n'
        "[cache.models.gpt]\nttl = -1\n[cache.models.nope]\nenabled = false\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_file_config(path)
    text = "\n".join(caught.value.problems)
    assert "cache.scope" in text
    assert "cache.ttl" in text
    assert "cache.max_entry_bytes" in text
    assert "cache.models.gpt.ttl" in text

    path.write_text(
        '[models.gpt]\ndeployments = [{provider = "openai", model = "gpt-4o"}]\n'
        "[cache.models.nope]\nenabled = false\n"
    )
    with pytest.raises(ConfigError, match=r"cache\.models\.nope: unknown model 'nope'"):
        load_file_config(path)

    path.write_text("[cache]\nmax_entry_bytes = 2000000\nmemory_limit_bytes = 1000000\n")
    with pytest.raises(ConfigError, match="max_entry_bytes must not exceed memory_limit_bytes"):
        load_file_config(path)

    path.write_text(
        '[models.gpt]\ndeployments = [{provider = "openai", model = "gpt-4o"}]\n'
        '[cache]\nscope = "shared"\nttl = 120\n[cache.models.gpt]\nenabled = false\n'
    )
    config = load_file_config(path).cache
    assert config.scope == "shared"
    assert config.ttl == 120
    assert config.models["gpt"].enabled is False
