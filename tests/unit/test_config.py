"""Settings: DESIGN 7 names, one clear line per bad value, secrets never shown."""

from __future__ import annotations

import pytest

from worker.config import Settings, load_settings
from worker.errors import ConfigError

DESIGN_7_NAMES = """
KAFKA_BOOTSTRAP_SERVERS KAFKA_SECURITY_PROTOCOL HELICONE_API_KEY HELICONE_BASE_URL FEEDBACK_DRY_RUN
WORKER_WEB_PORT TOPIC_UI_EVENTS TOPIC_INVALID TOPIC_LATE TOPIC_OUTBOX TOPIC_DLQ ENGAGEMENT_WINDOW_S
CODE_WINDOW_S CLICKS_WINDOW_S TICKET_WINDOW_S WINDOW_GRACE_S IDLE_CLOSE_S DELIVERY_CONCURRENCY
DELIVERY_RATE_PER_S DELIVERY_MAX_ATTEMPTS DELIVERY_MAX_AGE_S STATE_DIR TOPIC_PARTITIONS
KAFKA_PRODUCER_BATCH_BYTES COLLECTOR_PORT COLLECTOR_HOST COLLECTOR_WRITE_KEYS
COLLECTOR_ALLOWED_ORIGINS COLLECTOR_MAX_BODY_BYTES COLLECTOR_MAX_EVENTS COLLECTOR_RATE_PER_S
""".split()  # noqa: SIM905 - reads like the DESIGN list


def test_every_design_name_is_a_setting() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    assert set(DESIGN_7_NAMES) <= fields


def test_defaults() -> None:
    settings = load_settings()
    assert settings.bootstrap_servers == ["localhost:9092"]
    assert settings.helicone_base == "https://api.helicone.ai"
    assert settings.worker_web_port == 6066
    assert settings.topic_partitions == 8
    assert (settings.engagement_window_s, settings.code_window_s) == (60, 30)
    assert (settings.clicks_window_s, settings.ticket_window_s) == (300, 86_400)


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092, k2:9093")
    monkeypatch.setenv("HELICONE_BASE_URL", "https://eu.api.helicone.ai")
    monkeypatch.setenv("CORRECTION_PHRASES", '["Nope", "wrong"]')
    settings = load_settings()
    assert settings.bootstrap_servers == ["k1:9092", "k2:9093"]
    assert settings.helicone_base == "https://eu.api.helicone.ai"
    assert settings.correction_phrases == ["nope", "wrong"]


def test_each_bad_value_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "no-port-here")
    monkeypatch.setenv("WORKER_WEB_PORT", "seventy")
    monkeypatch.setenv("TOPIC_PARTITIONS", "0")
    monkeypatch.setenv("HELICONE_BASE_URL", "not a url")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    problems = caught.value.problems
    assert len(problems) == 4
    by_name = {line.split(":", 1)[0]: line for line in problems}
    assert set(by_name) == {
        "KAFKA_BOOTSTRAP_SERVERS", "WORKER_WEB_PORT", "TOPIC_PARTITIONS", "HELICONE_BASE_URL"
    }
    assert "host:port" in by_name["KAFKA_BOOTSTRAP_SERVERS"]
    assert "greater than or equal to 1" in by_name["TOPIC_PARTITIONS"]


def test_secrets_never_appear(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-helicone-abcdef0123456789"
    monkeypatch.setenv("HELICONE_API_KEY", secret)
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "hunter2-hunter2")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc")
    settings = load_settings()
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert secret not in text and "hunter2" not in text
    assert settings.require_api_key().get_secret_value() == secret

    monkeypatch.setenv("WORKER_WEB_PORT", "-1")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert secret not in str(caught.value)


def test_sasl_needs_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "KAFKA_SASL_USERNAME" in str(caught.value)


def test_missing_api_key_is_explained() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings().require_api_key()
    assert "HELICONE_API_KEY" in caught.value.problems[0]
    assert "FEEDBACK_DRY_RUN" in caught.value.problems[0]


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError):
        settings.topic_partitions = 3  # type: ignore[misc]


def test_producer_linger_reaches_faust(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """KAFKA_PRODUCER_LINGER_MS is Faust's ``producer_linger`` (seconds), which aiokafka's
    producer is created with: without it every few events pay for a produce request."""
    from worker.app import build_app

    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    assert build_app(load_settings()).faust_app.conf.producer_linger == pytest.approx(0.010)
    monkeypatch.setenv("KAFKA_PRODUCER_LINGER_MS", "0")
    assert build_app(load_settings()).faust_app.conf.producer_linger == 0
