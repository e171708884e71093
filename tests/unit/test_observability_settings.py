"""Settings of metrics and tracing: the scrape token, the multi-process directory, the
standard OpenTelemetry variables and the ``[metrics]`` / ``[tracing]`` tables."""

from __future__ import annotations

import ipaddress
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


def test_defaults_metrics_on_for_loopback_and_no_tracing() -> None:
    settings = load_settings(GOOD_ENV)
    assert settings.config.metrics.enabled
    assert settings.config.metrics.allow == [
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    ]
    assert settings.metrics_token is None
    assert settings.metrics_multiproc_dir is None
    assert settings.tracing is None


def test_metrics_token_and_directory(tmp_path: Path) -> None:
    settings = load_settings(
        {
            **GOOD_ENV,
            "INTERLOCK_METRICS_TOKEN": "a-long-enough-token",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        }
    )
    assert settings.metrics_token == "a-long-enough-token"
    assert settings.metrics_multiproc_dir == tmp_path
    found = problems(
        {
            "INTERLOCK_METRICS_TOKEN": "short-secret",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing"),
        }
    )
    assert [line.split(":")[0] for line in found] == [
        "INTERLOCK_METRICS_TOKEN",
        "PROMETHEUS_MULTIPROC_DIR",
    ]
    assert "short-secret" not in "\n".join(found)


def test_tracing_from_the_standard_variables() -> None:
    settings = load_settings(
        {
            **GOOD_ENV,
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20t0ken,x-team=ops",
            "OTEL_SERVICE_NAME": "gateway-eu",
        }
    )
    tracing = settings.tracing
    assert tracing is not None
    assert tracing.endpoint == "http://collector:4318/v1/traces"
    assert tracing.headers == {"authorization": "Bearer t0ken", "x-team": "ops"}
    assert tracing.service_name == "gateway-eu"
    assert "t0ken" not in repr(tracing)
    # The signal's own endpoint is used as it is, and wins.
    traces_only = load_settings(
        {
            **GOOD_ENV,
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example/otlp",
        }
    ).tracing
    assert traces_only is not None and traces_only.endpoint == "https://traces.example/otlp"


@pytest.mark.parametrize(
    "switch", [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}]
)
def test_tracing_switched_off_by_the_standard_variables(switch: dict[str, str]) -> None:
    env = {**GOOD_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", **switch}
    assert load_settings(env).tracing is None


def test_tracing_from_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "interlock.toml"
    path.write_text(
        '[tracing]\nendpoint = "http://127.0.0.1:4318/v1/traces"\nsample_ratio = 0.25\n'
    )
    tracing = load_settings(GOOD_ENV, config_path=path).tracing
    assert tracing is not None
    assert tracing.endpoint == "http://127.0.0.1:4318/v1/traces"
    assert tracing.sample_ratio == 0.25
    assert tracing.service_name == "interlock"
    path.write_text('[tracing]\nendpoint = "http://127.0.0.1:4318/v1/traces"\nenabled = false\n')
    assert load_settings(GOOD_ENV, config_path=path).tracing is None


def test_bad_tracing_values(tmp_path: Path) -> None:
    found = problems(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_TRACES_EXPORTER": "zipkin",
            "OTEL_EXPORTER_OTLP_HEADERS": "no-equals-sign",
        }
    )
    assert sorted(line.split(":")[0] for line in found) == [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_TRACES_EXPORTER",
    ]
    found = problems({}, '[tracing]\nendpoint = "ftp://x"\nsample_ratio = 2\n', tmp_path)
    assert sorted(line.split(":")[1].strip() for line in found) == [
        "tracing.endpoint",
        "tracing.sample_ratio",
    ]


def test_bad_metrics_allowlist(tmp_path: Path) -> None:
    found = problems({}, '[metrics]\nallow = ["10.0.0.1/8"]\n', tmp_path)
    assert len(found) == 1 and "metrics.allow" in found[0] and "10.0.0.1/8" in found[0]
    found = problems({}, "[metrics]\nallow = [10]\n", tmp_path)
    assert len(found) == 1 and "metrics.allow" in found[0]
