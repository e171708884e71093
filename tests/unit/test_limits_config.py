"""``[limits]`` in interlock.toml: defaults, and one clear line per bad value."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from interlock.settings import ConfigError, load_settings

GOOD_ENV = {"INTERLOCK_DATA_DIR": "/tmp/interlock-test-data"}
MODEL = """
[models.gpt]
deployments = [{ provider = "openai", model = "gpt-4o", api_key_env = "K" }]
"""


def load(tmp_path: Path, limits: str) -> list[str] | object:
    path = tmp_path / "interlock.toml"
    path.write_text(MODEL + "\n[limits]\n" + limits)
    try:
        return load_settings({**GOOD_ENV, "K": "x"}, config_path=path).config.limits
    except ConfigError as exc:
        return exc.problems


def test_defaults_without_a_file() -> None:
    limits = load_settings(GOOD_ENV).config.limits
    assert limits.ip_rpm is None
    assert limits.failed_auth_per_minute == 30
    assert limits.trusted_proxies == []
    assert limits.on_state_failure == "local"
    assert limits.concurrency_lease == 60
    assert limits.models == {}
    assert limits.tiers == {}


def test_a_full_section(tmp_path: Path) -> None:
    limits = load(
        tmp_path,
        """
ip_rpm = 600
failed_auth_per_minute = 5
trusted_proxies = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"]
on_state_failure = "closed"
concurrency_lease = 30
models.gpt = { rpm = 10, tpm = 5000 }
tiers.free = { rpm = 1000 }
""",
    )
    assert not isinstance(limits, list), limits
    assert limits.ip_rpm == 600  # type: ignore[attr-defined]
    assert limits.trusted_proxies == [  # type: ignore[attr-defined]
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("192.0.2.1/32"),
    ]
    assert limits.models["gpt"].tpm == 5000  # type: ignore[attr-defined]
    assert limits.tiers["free"].rpm == 1000  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("ip_rpm = -5", "limits.ip_rpm: Input should be greater than or equal to 1"),
        ("ip_rpm = 0", "limits.ip_rpm: Input should be greater than or equal to 1"),
        ("ip_rpm = 100000000000", "limits.ip_rpm: Input should be less than or equal to 10000000"),
        ("ip_rpm = 2.5", "limits.ip_rpm: Input should be a valid integer"),
        ("ip_rpm = true", "limits.ip_rpm: Input should be a valid integer"),
        (
            "failed_auth_per_minute = 1000000",
            "limits.failed_auth_per_minute: Input should be less than or equal to 100000",
        ),
        (
            "failed_auth_per_minute = -1",
            "limits.failed_auth_per_minute: Input should be greater than or equal to 1",
        ),
        (
            'trusted_proxies = ["10.0.0.1/8"]',
            "limits.trusted_proxies: '10.0.0.1/8' is not an IP address or CIDR network "
            "(10.0.0.1/8 has host bits set)",
        ),
        (
            'trusted_proxies = ["proxy.internal"]',
            "limits.trusted_proxies: 'proxy.internal' is not an IP address or CIDR network",
        ),
        (
            'trusted_proxies = "10.0.0.0/8"',
            "limits.trusted_proxies: Input should be a valid list",
        ),
        (
            'on_state_failure = "maybe"',
            "limits.on_state_failure: Input should be 'local', 'open' or 'closed'",
        ),
        ("concurrency_lease = 0", "limits.concurrency_lease: Input should be greater than 0"),
        (
            "concurrency_lease = 1e9",
            "limits.concurrency_lease: Input should be less than or equal to 86400",
        ),
        ("models.gpt = { rpm = -1 }", "limits.models.gpt.rpm: Input should be greater than"),
        (
            "models.gpt = { tpm = 99999999999999 }",
            "limits.models.gpt.tpm: Input should be less than or equal to 10000000000",
        ),
        ("models.nope = { rpm = 1 }", "limits.models.nope: unknown model"),
        ("tiers.gold = { rpm = 1 }", "limits.tiers.gold: unknown tier"),
        ("tiers.free = { rpn = 1 }", "limits.tiers.free.rpn: Extra inputs are not permitted"),
        ("ip_rmp = 1", "limits.ip_rmp: Extra inputs are not permitted"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, line: str, problem: str) -> None:
    problems = load(tmp_path, line)
    assert isinstance(problems, list)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"interlock.toml: {problem}"), problems[0]
