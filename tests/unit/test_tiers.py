"""Tiers and scopes: the configuration of tiers, the rule that a key only narrows its
owner's tier, and the effective scope the authenticator computes once and caches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from interlock.auth.access import check_model, visible_models
from interlock.auth.authenticator import Authenticator
from interlock.auth.keys import generate_key
from interlock.auth.principal import NO_ACCESS, UNLIMITED, Principal, Scope
from interlock.auth.tiers import Tiers, check_budget
from interlock.errors import InvalidRequest, ModelNotFound, PermissionDenied
from interlock.settings import ConfigError, TierConfig, load_settings
from interlock.store.keys import KeyRecord

GOOD_ENV = {"INTERLOCK_DATA_DIR": "/tmp/interlock-test-data"}
SECRET = b"0123456789abcdef0123456789abcdef"
MODELS = ["local", "gpt", "claude"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def load(tmp_path: Path, config: str) -> list[str] | None:
    """The problems of ``config`` (with three models defined), or None if it is valid."""
    path = tmp_path / "interlock.toml"
    models = "\n".join(f'[models.{m}]\ndeployments = [{{ provider = "local" }}]' for m in MODELS)
    path.write_text(models.replace('"local" }]', '"local", name = "d-MODEL" }]') + config)
    text = path.read_text()
    for model in MODELS:  # unique deployment names
        text = text.replace("d-MODEL", f"d-{model}", 1)
    path.write_text(text)
    try:
        load_settings(GOOD_ENV, config_path=path)
    except ConfigError as exc:
        return exc.problems
    return None


# --- configuration ----------------------------------------------------------------------


def test_three_tiers_exist_by_default() -> None:
    tiers = load_settings(GOOD_ENV).config.tiers
    assert list(tiers) == ["free", "premium", "enterprise"]
    assert tiers["free"].models == "*" and tiers["free"].rpm == 20
    assert tiers["enterprise"] == TierConfig()
    assert load_settings(GOOD_ENV).config.auth.default_tier == "free"


def test_a_configured_tier_replaces_its_default_and_others_stay(tmp_path: Path) -> None:
    path = tmp_path / "interlock.toml"
    path.write_text(
        '[models.local]\ndeployments = [{ provider = "local" }]\n'
        '[tiers.free]\nmodels = ["local"]\nrpm = 5\ndaily_budget = 0.25\n'
        '[tiers.gold]\nmodels = "*"\nmonthly_budget = "1000.5"\n'
    )
    config = load_settings(GOOD_ENV, config_path=path).config
    assert list(config.tiers) == ["free", "premium", "enterprise", "gold"]
    free = config.tiers["free"]
    assert free.allowed_models == frozenset({"local"}) and free.rpm == 5 and free.tpm is None
    assert free.daily_budget == Decimal("0.25")
    assert config.tiers["gold"].allowed_models is None
    assert config.tiers["gold"].monthly_budget == Decimal("1000.5")


def test_a_star_in_the_list_means_every_model() -> None:
    assert TierConfig.model_validate({"models": ["*"]}).allowed_models is None
    assert TierConfig.model_validate({"models": []}).allowed_models == frozenset()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("[tiers.free]\nrpm = -1\n", "tiers.free.rpm: Input should be greater than or equal to 1"),
        ("[tiers.free]\nrpm = 0\n", "tiers.free.rpm: Input should be greater than or equal to 1"),
        ("[tiers.free]\ntpm = 1e12\n", "tiers.free.tpm:"),
        ("[tiers.free]\nrpm = 100000000\n", "tiers.free.rpm: Input should be less than or equal"),
        ("[tiers.free]\nmax_concurrent = 10000000\n", "tiers.free.max_concurrent: Input should"),
        ("[tiers.free]\ndaily_budget = -5\n", "tiers.free.daily_budget: Input should be greater"),
        ("[tiers.free]\nmonthly_budget = 1e15\n", "tiers.free.monthly_budget: Input should be"),
        ("[tiers.free]\ndaily_budget = nan\n", "tiers.free.daily_budget: Input should be a finite"),
        ("[tiers.free]\ndaily_budget = inf\n", "tiers.free.daily_budget: Input should be a finite"),
        ("[tiers.free]\ndaily_budget = 0.0000001\n", "tiers.free.daily_budget: Decimal input"),
        ("[tiers.free]\nrpm = true\n", "tiers.free.rpm:"),
        ('[tiers.free]\nmodels = "gpt"\n', "tiers.free.models: expected a list of model names"),
        ('[tiers.free]\nmodels = ["ghost"]\n', "tiers.free.models: unknown model 'ghost'"),
        ("[tiers.free]\nbudget = 5\n", "tiers.free.budget: Extra inputs are not permitted"),
        ('[tiers."Gold Tier"]\n', "tiers.Gold Tier: a tier name is 1 to 64 characters"),
        ('[auth]\ndefault_tier = "gold"\n', "auth.default_tier: unknown tier 'gold'"),
        ("[auth]\nsession_leeway = 3600\n", "auth.session_leeway: Input should be less than"),
    ],
)
def test_bad_tier_values_are_one_line_each(tmp_path: Path, config: str, expected: str) -> None:
    problems = load(tmp_path, "\n" + config)
    assert problems is not None
    assert any(expected in line for line in problems), problems
    assert all("\n" not in line for line in problems)


def test_several_bad_values_give_one_line_each(tmp_path: Path) -> None:
    problems = load(tmp_path, "\n[tiers.free]\nrpm = -1\ntpm = -1\ndaily_budget = -1\n")
    assert problems is not None
    assert sorted(line.split(": ")[1] for line in problems) == [
        "tiers.free.daily_budget",
        "tiers.free.rpm",
        "tiers.free.tpm",
    ]


@pytest.mark.parametrize(
    "key",
    ["x" * 513, "short", "ascii-but-with-a-newline\n-0123456789", "ключ-администратора-0123456789"],
)
def test_the_admin_key_must_be_24_to_512_printable_ascii_characters(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({**GOOD_ENV, "INTERLOCK_ADMIN_KEY": key})
    assert caught.value.problems == [
        "INTERLOCK_ADMIN_KEY: must be 24 to 512 printable ASCII characters"
    ]
    assert load_settings({**GOOD_ENV, "INTERLOCK_ADMIN_KEY": "k" * 512}).admin_key == "k" * 512


# --- scopes -------------------------------------------------------------------------------


def test_narrowing_takes_the_intersection_and_the_smaller_limits() -> None:
    tier = Scope(models=frozenset({"a", "b"}), rpm=100, daily_budget=Decimal(10))
    key = Scope(models=frozenset({"b", "c"}), rpm=500, tpm=1000, daily_budget=Decimal("2.5"))
    both = tier.narrowed_by(key)
    assert both == Scope(models=frozenset({"b"}), rpm=100, tpm=1000, daily_budget=Decimal("2.5"))
    assert UNLIMITED.narrowed_by(key) == key and key.narrowed_by(UNLIMITED) == key
    assert NO_ACCESS.narrowed_by(key).models == frozenset()
    assert both.allows("b") and not both.allows("a") and UNLIMITED.allows("anything")


def tiers() -> Tiers:
    return Tiers(
        {
            "basic": TierConfig(
                models=["gpt"], rpm=60, tpm=1000, daily_budget=Decimal(5), monthly_budget=None
            ),
            "open": TierConfig(),
        },
        MODELS,
        "basic",
    )


def scope_error(tier: str, scope: Scope) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        tiers().check_key_scope(tier, scope)
    assert caught.value.status == 400
    return caught.value


def test_a_key_scope_within_the_tier_is_accepted() -> None:
    narrow = Scope(models=frozenset({"gpt"}), rpm=60, tpm=10, daily_budget=Decimal("4.999999"))
    assert tiers().check_key_scope("basic", narrow) == narrow
    assert tiers().check_key_scope("basic", UNLIMITED) == UNLIMITED  # inherits everything
    assert tiers().check_key_scope("basic", Scope(monthly_budget=Decimal(100))).monthly_budget


@pytest.mark.parametrize(
    ("scope", "param", "code"),
    [
        (Scope(models=frozenset({"claude"})), "models", "scope_too_wide"),
        (Scope(models=frozenset({"gpt", "ghost"})), "models", "scope_too_wide"),
        (Scope(rpm=61), "rpm", "scope_too_wide"),
        (Scope(tpm=1001), "tpm", "scope_too_wide"),
        (Scope(daily_budget=Decimal("5.000001")), "daily_budget", "scope_too_wide"),
        (Scope(rpm=0), "rpm", "invalid_request"),
        (Scope(rpm=-5), "rpm", "invalid_request"),
        (Scope(max_concurrent=0), "max_concurrent", "invalid_request"),
        (Scope(daily_budget=Decimal(-1)), "daily_budget", "invalid_request"),
        (Scope(monthly_budget=Decimal("NaN")), "monthly_budget", "invalid_request"),
        (Scope(monthly_budget=Decimal("Infinity")), "monthly_budget", "invalid_request"),
        (Scope(monthly_budget=Decimal("1E+10")), "monthly_budget", "invalid_request"),
    ],
)
def test_a_wider_or_absurd_key_scope_names_the_field(scope: Scope, param: str, code: str) -> None:
    error = scope_error("basic", scope)
    assert (error.param, error.code) == (param, code)


def test_even_an_unlimited_tier_bounds_absurd_values() -> None:
    assert scope_error("open", Scope(tpm=10**11)).param == "tpm"
    assert scope_error("open", Scope(models=frozenset({"ghost"}))).param == "models"
    assert tiers().check_key_scope("open", Scope(models=frozenset({"claude"}))).models


def test_an_unconfigured_tier_is_a_clear_400() -> None:
    error = scope_error("gold", UNLIMITED)
    assert (error.code, error.param) == ("unknown_tier", "tier")
    with pytest.raises(InvalidRequest) as caught:
        tiers().check_tier("gold")
    assert "gold" in caught.value.message and "basic" in caught.value.message


def test_budgets_have_at_most_six_decimals() -> None:
    assert check_budget(Decimal("1.000000000"), "b") == Decimal(1)
    with pytest.raises(InvalidRequest):
        check_budget(Decimal("0.0000001"), "b")


# --- model access -------------------------------------------------------------------------


def principal(scope: Scope, *, tier_known: bool = True) -> Principal:
    return Principal("u", "u", "member", "basic", "k", scope=scope, tier_known=tier_known)


def test_a_model_outside_the_scope_is_not_found_like_an_unknown_one() -> None:
    only_gpt = principal(Scope(models=frozenset({"gpt"})))
    check_model(only_gpt, "gpt")
    with pytest.raises(ModelNotFound) as hidden:
        check_model(only_gpt, "claude")
    # The exact error the chat route gives for a model that does not exist at all.
    assert hidden.value.message == "The model 'claude' does not exist."
    assert (hidden.value.status, hidden.value.code, hidden.value.param) == (
        404,
        "model_not_found",
        "model",
    )
    check_model(principal(UNLIMITED), "claude")
    assert visible_models(only_gpt, MODELS) == ["gpt"]
    assert visible_models(principal(UNLIMITED), MODELS) == MODELS


def test_an_unknown_tier_is_a_clear_403() -> None:
    lost = principal(NO_ACCESS, tier_known=False)
    with pytest.raises(PermissionDenied) as caught:
        visible_models(lost, MODELS)
    assert caught.value.status == 403 and "'basic' is not configured" in caught.value.message
    with pytest.raises(PermissionDenied):
        check_model(lost, "gpt")


# --- the authenticator's effective scope and cache ------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeKeys:
    """A key lookup holding one record, counting look-ups."""

    def __init__(self, record: KeyRecord | None) -> None:
        self.record = record
        self.lookups = 0

    async def find_by_key(self, key: str) -> KeyRecord | None:
        self.lookups += 1
        return self.record


def record(**changes: object) -> KeyRecord:
    now = datetime.now(UTC)
    fields: dict[str, object] = {
        "key_id": "k1",
        "short_id": "il_live_abcdefgh",
        "name": "",
        "user_id": "u1",
        "user_name": "ada",
        "role": "member",
        "tier": "basic",
        "user_status": "active",
        "created_at": now,
        "expires_at": None,
        "revoked_at": None,
        "last_used_at": None,
        "models": ("gpt", "claude"),
        "rpm": 1000,
        "tpm": None,
        "max_concurrent": 3,
        "daily_budget": Decimal(1),
        "monthly_budget": None,
    }
    fields.update(changes)
    return KeyRecord(**fields)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_the_effective_scope_is_computed_once_and_cached() -> None:
    key = generate_key()
    clock = FakeClock()
    keys = FakeKeys(record())
    authenticator = Authenticator(keys, SECRET, tiers=tiers(), clock=clock)
    first = await authenticator.authenticate(key)
    assert first.scope == Scope(
        models=frozenset({"gpt"}), rpm=60, tpm=1000, max_concurrent=3, daily_budget=Decimal(1)
    )
    assert first.owner_scope == tiers().scope("basic")
    assert (first.tier_known, first.via) == (True, "key")
    assert await authenticator.authenticate(key) is first
    assert keys.lookups == 1
    clock.now += 1.0  # the TTL: looked up again
    await authenticator.authenticate(key)
    assert keys.lookups == 2
    assert authenticator.drain_used_keys() == {"k1"}
    assert authenticator.drain_used_keys() == set()


@pytest.mark.anyio
async def test_a_mistyped_key_of_ours_is_refused_without_a_lookup() -> None:
    key = generate_key()
    mistyped = key[:-1] + ("A" if key[-1] != "A" else "B")
    keys = FakeKeys(record())
    authenticator = Authenticator(keys, SECRET, tiers=tiers())
    await authenticator.authenticate(key)  # the right key is in the cache now
    with pytest.raises(Exception, match="checksum mismatch"):
        await authenticator.authenticate(mistyped)
    assert keys.lookups == 1


@pytest.mark.anyio
async def test_revocation_shows_within_the_ttl_and_at_once_after_forget() -> None:
    key = generate_key()
    clock = FakeClock()
    keys = FakeKeys(record())
    authenticator = Authenticator(keys, SECRET, tiers=tiers(), clock=clock)
    await authenticator.authenticate(key)
    keys.record = record(revoked_at=datetime.now(UTC))
    await authenticator.authenticate(key)  # cached for up to a second
    clock.now += 1.0
    with pytest.raises(Exception, match="Missing or invalid API key"):
        await authenticator.authenticate(key)
    keys.record = record()
    authenticator.forget()
    await authenticator.authenticate(key)
    keys.record = record(user_status="disabled")
    authenticator.forget()
    with pytest.raises(Exception, match="Missing or invalid API key"):
        await authenticator.authenticate(key)


@pytest.mark.anyio
async def test_expiry_is_checked_on_every_request_even_when_cached() -> None:
    key = generate_key()
    keys = FakeKeys(record(expires_at=datetime.now(UTC) + timedelta(milliseconds=50)))
    authenticator = Authenticator(keys, SECRET, tiers=tiers(), cache_ttl=3600)
    await authenticator.authenticate(key)
    keys.record = None
    await authenticator.authenticate(key)
    import anyio

    await anyio.sleep(0.06)
    with pytest.raises(Exception, match="Missing or invalid API key"):
        await authenticator.authenticate(key)
    assert keys.lookups == 1


@pytest.mark.anyio
async def test_an_unknown_tier_authenticates_with_no_access() -> None:
    authenticator = Authenticator(FakeKeys(record(tier="gold")), SECRET, tiers=tiers())
    lost = await authenticator.authenticate(generate_key())
    assert not lost.tier_known and lost.scope == NO_ACCESS and lost.owner_scope == NO_ACCESS


class SlowKeys(FakeKeys):
    async def find_by_key(self, key: str) -> KeyRecord | None:
        import anyio

        await anyio.sleep(0.01)
        return await super().find_by_key(key)


@pytest.mark.anyio
async def test_concurrent_cache_misses_share_one_lookup() -> None:
    import anyio

    key = generate_key()
    keys = SlowKeys(record())
    authenticator = Authenticator(keys, SECRET, tiers=tiers(), clock=FakeClock())
    seen = []

    async def one() -> None:
        seen.append(await authenticator.authenticate(key))

    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(one)
    assert keys.lookups == 1
    assert len({id(principal) for principal in seen}) == 1
