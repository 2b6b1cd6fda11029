"""What a log may show of a NATS URL, and the credentials a sidecar reads from its environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_settings
from agent.runtime.bus_security import BusSecurity, redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats://agent:s3cret@nats.example:4222", "nats://agent:***@nats.example:4222"),
        ("tls://tok3n@nats.example:4222", "tls://***@nats.example:4222"),
        ("nats://a:p@h1:4222,nats://h2:4222", "nats://a:***@h1:4222,nats://h2:4222"),
        ("nats://a:p@ss@h:4222", "nats://a:***@h:4222"),  # an '@' inside the password
        ("", ""),
    ],
)
def test_a_logged_url_keeps_the_user_and_hides_a_password_or_token(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_an_error_quoting_the_url_is_redacted_too() -> None:
    url = "nats://agent:s3cret@h:4222"
    assert redact_text(f"cannot reach {url}", url) == "cannot reach nats://agent:***@h:4222"


def test_the_sidecar_reads_the_same_fields_from_cost_agent_bus_variables(tmp_path: Path) -> None:
    env = {
        "COST_AGENT_BUS__USER": "sidecar",
        "COST_AGENT_BUS__PASSWORD": "12345",  # a plain string, even when it looks like a number
        "COST_AGENT_BUS__CONNECT_TIMEOUT_SECONDS": "2.5",
        "OTHER": "x",
    }
    assert BusSecurity.from_env(env) == BusSecurity(
        user="sidecar", password="12345", connect_timeout_seconds=2.5
    )
    assert BusSecurity.from_env({}) == BusSecurity()


def test_a_bad_sidecar_variable_is_one_line_that_start_up_reports_as_cannot_connect() -> None:
    with pytest.raises(ConnectionError) as caught:
        BusSecurity.from_env({"COST_AGENT_BUS__PASSWORD": "x"})
    assert str(caught.value) == "environment COST_AGENT_BUS__*: password: a password needs a user"


def test_tls_files_make_an_ssl_context_that_trusts_only_the_given_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate")
    with pytest.raises(ConnectionError, match="tls_ca_file"):
        BusSecurity(tls_ca_file=str(ca)).connect_options()
    assert "tls" not in BusSecurity().connect_options()


@pytest.mark.parametrize("password", ["12345", "true", "1e3", '"quoted"', "a b = c"])
def test_the_agent_takes_a_text_field_from_its_variable_as_it_is(password: str) -> None:
    env = {"COST_AGENT_BUS__USER": "agent", "COST_AGENT_BUS__PASSWORD": password}
    assert load_settings(env=env).bus.password == password


def test_numbers_in_variables_are_still_read_as_numbers() -> None:
    env = {"COST_AGENT_BUS__CONNECT_TIMEOUT_SECONDS": "2.5", "COST_AGENT_METRICS__PORT": "9000"}
    settings = load_settings(env=env)
    assert settings.bus.connect_timeout_seconds == 2.5
    assert settings.metrics.port == 9000
