"""Settings: every bad value becomes one clear line naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from interlock.settings import ConfigError, load_settings

GOOD_ENV = {"INTERLOCK_DATA_DIR": "/tmp/interlock-test-data"}


def problems(
    env: dict[str, str], config: str | None = None, tmp_path: Path | None = None
) -> list[str]:
    path = None
    if config is not None:
        assert tmp_path is not None
        path = tmp_path / "interlock.toml"
        path.write_text(config)
    with pytest.raises(ConfigError) as caught:
        load_settings({**GOOD_ENV, **env}, config_path=path)
    return caught.value.problems


def test_defaults_serve_the_embedded_model() -> None:
    settings = load_settings(GOOD_ENV)
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert list(settings.config.models) == ["local"]
    assert settings.config.models["local"].deployments[0].provider == "local"
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert not settings.insecure_no_auth


def test_every_bad_environment_value_is_reported_at_once() -> None:
    found = problems(
        {
            "INTERLOCK_PORT": "eighty",
            "INTERLOCK_SECRET": "short",
            "INTERLOCK_ADMIN_KEY": "tiny",
            "INTERLOCK_LOG_LEVEL": "loud",
            "INTERLOCK_INSECURE_NO_AUTH": "maybe",
        }
    )
    assert [line.split(":")[0] for line in found] == [
        "INTERLOCK_PORT",
        "INTERLOCK_SECRET",
        "INTERLOCK_ADMIN_KEY",
        "INTERLOCK_LOG_LEVEL",
        "INTERLOCK_INSECURE_NO_AUTH",
    ]


def test_database_url_schemes() -> None:
    env = {"INTERLOCK_SECRET": "s" * 40}
    url = load_settings({**GOOD_ENV, **env, "DATABASE_URL": "postgres://u:pw@db/x"}).database_url
    assert url == "postgresql+asyncpg://u:pw@db/x"
    found = problems({**env, "DATABASE_URL": "mysql://u:hunter2@db/x"})
    assert found == ["DATABASE_URL: unsupported scheme 'mysql' (use postgresql or sqlite)"]
    assert "hunter2" not in found[0]


def test_external_database_requires_a_shared_secret() -> None:
    found = problems({"DATABASE_URL": "postgresql://db/x"})
    assert found[0].startswith("INTERLOCK_SECRET: required")


def test_config_file_problems_name_the_setting(tmp_path: Path) -> None:
    config = """
[models.gpt]
fallbacks = ["nope"]
deployments = [
  { provider = "openai", model = "gpt-4o", priority = -1 },
  { provider = "anthropic" },
  { provider = "openai", model = "x", base_url = "https://user:pw@host/v1" },
]
"""
    found = problems({}, config, tmp_path)
    text = "\n".join(found)
    assert "interlock.toml: models.gpt.deployments.0.priority:" in text
    assert "a anthropic deployment needs `model`" in text
    assert "must not carry credentials" in text
    assert "pw@" not in text
    assert "Traceback" not in text


def test_unknown_fallback_and_tier_models(tmp_path: Path) -> None:
    config = """
[models.a]
fallbacks = ["ghost", "a"]
deployments = [{ provider = "local" }]

[tiers.free]
models = ["phantom"]
"""
    text = "\n".join(problems({}, config, tmp_path))
    assert "unknown model 'ghost'" in text
    assert "cannot fall back to itself" in text
    assert "tiers.free.models: unknown model 'phantom'" in text


def test_missing_provider_key_is_reported(tmp_path: Path) -> None:
    config = """
[models.gpt]
deployments = [{ provider = "openai", model = "gpt-4o" }]
"""
    assert problems({}, config, tmp_path) == [
        "OPENAI_API_KEY: not set, but deployment 'openai:gpt-4o@api.openai.com' of model "
        "'gpt' needs it"
    ]


def test_unknown_keys_and_bad_toml(tmp_path: Path) -> None:
    assert "Extra inputs are not permitted" in "\n".join(
        problems({}, "[server]\nmax_body_byte = 5\n", tmp_path)
    )
    [line] = problems({}, "[server\n", tmp_path)
    assert "not valid TOML" in line
    with pytest.raises(ConfigError) as caught:
        load_settings(GOOD_ENV, config_path=tmp_path / "missing.toml")
    assert caught.value.problems == [f"{tmp_path / 'missing.toml'}: file not found"]


def test_deployment_defaults(tmp_path: Path) -> None:
    path = tmp_path / "interlock.toml"
    path.write_text(
        '[models.claude]\ndeployments = [{ provider = "anthropic", model = "claude-x" }]\n'
    )
    settings = load_settings({**GOOD_ENV, "ANTHROPIC_API_KEY": "k"}, config_path=path)
    deployment = settings.config.models["claude"].deployments[0]
    assert deployment.base_url == "https://api.anthropic.com"
    assert deployment.api_key_env == "ANTHROPIC_API_KEY"
    assert deployment.name == "anthropic:claude-x@api.anthropic.com"
    assert settings.api_key_for(deployment) == "k"


def test_database_pool_settings() -> None:
    pool = load_settings(
        {**GOOD_ENV, "DATABASE_POOL_SIZE": "20", "DATABASE_POOL_TIMEOUT": "2.5"}
    ).database_pool
    assert (pool.size, pool.max_overflow, pool.timeout, pool.recycle) == (20, 10, 2.5, 1800.0)
    assert problems({"DATABASE_POOL_SIZE": "0", "DATABASE_MAX_OVERFLOW": "lots"}) == [
        "DATABASE_POOL_SIZE: must be between 1 and 1000, got 0",
        "DATABASE_MAX_OVERFLOW: expected a number, got 'lots'",
    ]


@pytest.mark.anyio
async def test_the_pool_reaches_the_engine() -> None:
    from interlock.store.database import database_for

    env = {
        **GOOD_ENV,
        "DATABASE_URL": "postgresql://u:p@127.0.0.1:1/x",
        "INTERLOCK_SECRET": "s" * 40,
        "DATABASE_POOL_SIZE": "7",
        "DATABASE_POOL_RECYCLE": "60",
    }
    database = database_for(load_settings(env))
    try:
        assert database.engine.pool.size() == 7  # type: ignore[attr-defined]
        assert database.engine.pool._recycle == 60  # type: ignore[attr-defined]
    finally:
        await database.aclose()
