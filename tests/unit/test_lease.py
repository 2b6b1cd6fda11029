"""The leader lease's rules (agent/core/lease.py): who creates, who takes over and when, when a leader
renews and when it must step down, judged on each replica's own monotonic clock."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import ConfigError, load_settings
from agent.core.lease import (
    MAX_LEASE_SECONDS,
    MAX_REPLICA_ID_LENGTH,
    MIN_LEASE_SECONDS,
    REPLICA_ID_PATTERN,
    Held,
    LeaseTiming,
    Sighting,
    default_replica_id,
    fence_deadline,
    follower_decision,
    holder_of,
    leader_decision,
    lease_bucket,
    sight,
)

TIMING = LeaseTiming(10.0)


def test_a_follower_creates_an_absent_lease_at_once() -> None:
    seen = sight(None, None, 0, now=100.0)
    assert follower_decision(seen, 100.0, TIMING).action == "create"


def test_a_released_lease_reads_as_absent_whatever_its_revision() -> None:
    seen = sight(None, None, 17, now=100.0)
    assert seen.revision == 0
    assert follower_decision(seen, 100.0, TIMING).action == "create"


def test_a_follower_waits_while_the_revision_it_sees_is_younger_than_a_lease() -> None:
    seen = sight(None, "a", 5, now=100.0)
    for now in (100.0, 105.0, 109.99):
        seen = sight(seen, "a", 5, now)
        assert follower_decision(seen, now, TIMING).action == "wait"


def test_a_follower_takes_over_a_revision_it_has_itself_seen_unchanged_for_a_lease() -> None:
    seen = sight(None, "a", 5, now=100.0)
    seen = sight(seen, "a", 5, now=110.0)
    assert seen.since == 100.0
    decision = follower_decision(seen, 110.0, TIMING)
    assert (decision.action, decision.revision) == ("take_over", 5)


def test_a_renewal_restarts_the_followers_clock() -> None:
    seen = sight(None, "a", 5, now=100.0)
    seen = sight(seen, "a", 6, now=108.0)  # renewed
    assert seen == Sighting("a", 6, 108.0)
    assert follower_decision(seen, 117.0, TIMING).action == "wait"
    assert follower_decision(seen, 118.0, TIMING).action == "take_over"


def test_the_followers_clock_starts_at_its_first_sight_not_at_the_write() -> None:
    """A follower that arrives late, or whose reads failed for a while, counts from when it first saw
    the revision: it can only wait longer than the rules need, never less."""
    seen = sight(None, "a", 5, now=500.0)
    assert follower_decision(seen, 509.0, TIMING).action == "wait"


def test_a_replica_takes_back_at_once_the_revision_it_wrote_itself() -> None:
    seen = sight(None, "b", 9, now=100.0)
    decision = follower_decision(seen, 100.0, TIMING, last_written=9)
    assert (decision.action, decision.revision) == ("take_over", 9)
    assert follower_decision(seen, 100.0, TIMING, last_written=8).action == "wait"


def test_a_leader_renews_every_third_of_a_lease() -> None:
    held = Held(revision=7, sent_at=100.0)
    assert leader_decision(held, 100.0, TIMING).action == "wait"
    assert leader_decision(held, 103.0, TIMING).action == "wait"
    decision = leader_decision(held, 103.4, TIMING)
    assert (decision.action, decision.revision) == ("renew", 7)


def test_a_leader_that_cannot_renew_steps_down_after_two_thirds_of_a_lease() -> None:
    held = Held(revision=7, sent_at=100.0)
    assert leader_decision(held, 106.6, TIMING).action == "renew"
    assert leader_decision(held, 106.7, TIMING).action == "step_down"


@given(
    lease_s=st.floats(MIN_LEASE_SECONDS, MAX_LEASE_SECONDS),
    sent_at=st.floats(0, 1e6),
    write_delay=st.floats(0, 5),
    sight_delay=st.floats(0, 5),
    extra=st.floats(0, 100),
)
def test_no_follower_can_take_over_before_the_leader_has_gone_silent(
    lease_s: float, sent_at: float, write_delay: float, sight_delay: float, extra: float
) -> None:
    """The fence: the leader sends its last successful write at ``sent_at``; the write lands later, a
    follower sees it later still. Whenever the follower may take over, the leader's step-down and its
    fence are already behind it, with time to spare."""
    timing = LeaseTiming(lease_s)
    held = Held(revision=3, sent_at=sent_at)
    first_sight = sent_at + write_delay + sight_delay
    seen = sight(None, "leader", 3, first_sight)
    takeover = first_sight + extra
    if follower_decision(seen, takeover, timing).action == "take_over":
        assert leader_decision(held, takeover, timing).action == "step_down"
        assert fence_deadline(held, timing) < takeover
    assert timing.renew_every_s < timing.step_down_after_s < timing.fence_after_s < timing.lease_s


@pytest.mark.parametrize("lease_s", [0.0, 2.9, 301.0, float("nan"), float("inf"), -10.0])
def test_a_lease_outside_its_physical_range_is_refused_naming_the_field(lease_s: float) -> None:
    with pytest.raises(ValueError, match="lease_seconds"):
        LeaseTiming(lease_s)


def test_each_namespace_has_its_own_bucket_with_a_valid_name() -> None:
    assert lease_bucket("costagent") == "costagent-leader-costagent"
    assert lease_bucket("team.prod") == "costagent-leader-team_prod"
    with pytest.raises(ValueError, match="namespace"):
        lease_bucket("Bad Namespace")


@pytest.mark.parametrize("replica_id", ["", "agent-0.pod:1@node", "b" * 128])
def test_a_replica_id_is_a_name_fit_for_logs(replica_id: str) -> None:
    assert load_settings(env={"COST_AGENT_LEADER__REPLICA_ID": replica_id}).leader.replica_id == replica_id


@pytest.mark.parametrize("replica_id", ["-lead", "a b", "a\nb", "x" * 129])
def test_a_replica_id_that_is_not_is_refused_in_one_line(replica_id: str) -> None:
    with pytest.raises(ConfigError, match=r"leader\.replica_id"):
        load_settings(env={"COST_AGENT_LEADER__REPLICA_ID": replica_id})


def test_without_a_replica_id_a_replica_is_named_by_host_and_pid() -> None:
    assert default_replica_id("node-7.example", 42) == "node-7.example-42"
    for host in ("ünïcode host!", "-", "h" * 500):
        name = default_replica_id(host, 123456)
        assert re.fullmatch(REPLICA_ID_PATTERN, name), name
        assert len(name) <= MAX_REPLICA_ID_LENGTH


@pytest.mark.parametrize(
    ("value", "field"),
    [("1.0", "leader.lease_seconds"), ("inf", "leader.lease_seconds"), ('"yes"', "leader.enabled")],
)
def test_leader_settings_out_of_range_are_refused_naming_the_field(value: str, field: str) -> None:
    name = field.split(".")[1].upper()
    with pytest.raises(ConfigError, match=re.escape(field)):
        load_settings(env={f"COST_AGENT_LEADER__{name}": value})


def test_the_lease_is_on_by_default_with_jetstream_state_and_can_be_set_either_way() -> None:
    assert load_settings(env={}).leader.active(load_settings(env={}).state.store)
    assert not load_settings(env={}).leader.active("none")
    assert load_settings(env={"COST_AGENT_LEADER__ENABLED": "true"}).leader.active("none")
    assert not load_settings(env={"COST_AGENT_LEADER__ENABLED": "false"}).leader.active("jetstream")


def test_a_lease_value_is_read_whatever_was_written_there() -> None:
    assert holder_of(b"agent-a") == "agent-a"
    assert holder_of(b"") == "?"
    assert holder_of(b"\xff\xfe" * 1000).startswith("\ufffd")
    assert len(holder_of(b"x" * 10_000)) == 128
