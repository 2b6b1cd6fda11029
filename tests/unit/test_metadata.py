"""Parsing the cloud metadata services' answers: documented examples, "no notice yet", malformed answers
(errors that name the field)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.providers.metadata import (
    GCP_NOTICE_SECONDS,
    MetadataError,
    Notice,
    check_instance_id,
    parse_aws_instance_action,
    parse_aws_rebalance,
    parse_aws_token,
    parse_azure_events,
    parse_gcp_preempted,
    parse_http_date,
    parse_instance_id,
    parse_iso_time,
)

NOW = 1_700_000_000.0


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def field_of(excinfo: pytest.ExceptionInfo[MetadataError]) -> str:
    return excinfo.value.field


# AWS


def test_aws_documented_terminate_and_stop_answers() -> None:
    body = b'{"action": "terminate", "time": "2017-09-18T08:22:00Z"}'
    notice = parse_aws_instance_action(200, body, NOW)
    assert notice == Notice(
        kind="terminate",
        deadline=ts("2017-09-18T08:22:00"),
        received_at=NOW,
        key="aws:terminate@2017-09-18T08:22:00Z",
    )
    stop = parse_aws_instance_action(200, b'{"action": "stop", "time": "2017-09-18T08:22:00Z"}', NOW)
    assert stop is not None
    assert stop.kind == "stop"
    assert stop.deadline == ts("2017-09-18T08:22:00")


def test_aws_time_without_zone_is_utc() -> None:
    # An older example in the AWS docs leaves out the "Z".
    notice = parse_aws_instance_action(200, b'{"action": "stop", "time": "2017-09-18T08:22:00"}', NOW)
    assert notice is not None
    assert notice.deadline == ts("2017-09-18T08:22:00")


def test_aws_hibernate_is_a_stop_that_begins_now() -> None:
    later = ts("2030-01-01T00:02:00")
    body = b'{"action": "hibernate", "time": "2030-01-01T00:02:00Z"}'
    notice = parse_aws_instance_action(200, body, ts("2030-01-01T00:00:00"))
    assert notice is not None
    assert notice.kind == "stop"
    assert notice.deadline == ts("2030-01-01T00:00:00") < later


def test_aws_no_notice_yet_is_a_404() -> None:
    assert parse_aws_instance_action(404, b"<html>Not Found</html>", NOW) is None
    assert parse_aws_rebalance(404, b"", NOW) is None


def test_aws_rebalance_recommendation_deadline_is_the_time_it_was_read() -> None:
    notice = parse_aws_rebalance(200, b'{"noticeTime": "2020-10-27T08:22:00Z"}', NOW)
    assert notice == Notice(
        kind="rebalance", deadline=NOW, received_at=NOW, key="aws:rebalance@2020-10-27T08:22:00Z"
    )
    # Read again later: the same notice (same key), so it is not published twice.
    again = parse_aws_rebalance(200, b'{"noticeTime": "2020-10-27T08:22:00Z"}', NOW + 5)
    assert again is not None
    assert again.key == notice.key


@pytest.mark.parametrize(
    ("status", "body", "field", "problem"),
    [
        (200, b"{oops", "spot/instance-action", "not JSON"),
        (200, b"[]", "spot/instance-action", "not a JSON object"),
        (200, b"\xff\xfe", "spot/instance-action", "not JSON"),
        (200, b'{"time": "2017-09-18T08:22:00Z"}', "spot/instance-action.action", "missing"),
        (200, b'{"action": "reboot", "time": "2017-09-18T08:22:00Z"}', "spot/instance-action.action", None),
        (200, b'{"action": "stop"}', "spot/instance-action.time", "missing"),
        (200, b'{"action": "stop", "time": 1505722920}', "spot/instance-action.time", "not a string"),
        (200, b'{"action": "stop", "time": "tomorrow"}', "spot/instance-action.time", None),
        (200, b'{"action": "stop", "time": "1900-01-01T00:00:00Z"}', "spot/instance-action.time", None),
        (500, b"", "spot/instance-action", "HTTP 500"),
    ],
)
def test_aws_malformed_instance_action_names_the_field(
    status: int, body: bytes, field: str, problem: str | None
) -> None:
    with pytest.raises(MetadataError) as excinfo:
        parse_aws_instance_action(status, body, NOW)
    assert field_of(excinfo) == field
    assert field in str(excinfo.value)
    if problem is not None:
        assert excinfo.value.problem == problem


def test_aws_malformed_rebalance_names_the_field() -> None:
    with pytest.raises(MetadataError, match=r"noticeTime: missing"):
        parse_aws_rebalance(200, b"{}", NOW)
    with pytest.raises(MetadataError) as excinfo:
        parse_aws_rebalance(200, b'{"noticeTime": "last week"}', NOW)
    assert field_of(excinfo) == "events/recommendations/rebalance.noticeTime"


def test_aws_token() -> None:
    assert parse_aws_token(200, b"AQAEAE1zWXx-token==\n") == "AQAEAE1zWXx-token=="
    with pytest.raises(MetadataError, match="api/token: HTTP 403"):
        parse_aws_token(403, b"")
    with pytest.raises(MetadataError, match="api/token: not a token"):
        parse_aws_token(200, b"two words")


# GCP


def test_gcp_preempted_true_and_false() -> None:
    assert parse_gcp_preempted(200, b"FALSE", NOW) is None
    notice = parse_gcp_preempted(200, b"TRUE", NOW)
    assert notice == Notice(
        kind="terminate", deadline=NOW + GCP_NOTICE_SECONDS, received_at=NOW, key="gcp:preempted"
    )
    assert GCP_NOTICE_SECONDS == 30.0
    longer = parse_gcp_preempted(200, b"TRUE\n", NOW, notice_s=120.0)
    assert longer is not None
    assert longer.deadline == NOW + 120.0


@pytest.mark.parametrize(
    ("status", "body", "problem"),
    [(200, b"MAYBE", "neither TRUE nor FALSE"), (200, b"", "neither TRUE nor FALSE"), (503, b"", "HTTP 503")],
)
def test_gcp_malformed_preempted(status: int, body: bytes, problem: str) -> None:
    with pytest.raises(MetadataError) as excinfo:
        parse_gcp_preempted(status, body, NOW)
    assert field_of(excinfo) == "instance/preempted"
    assert excinfo.value.problem == problem


# Azure

# The documented example, with this VM's Preempt event and another VM's Reboot.
AZURE_DOC = b"""{
    "DocumentIncarnation": 2,
    "Events": [
        {
            "EventId": "C7061BAC-AFDC-4513-B24B-AA5F13A16123",
            "EventType": "Reboot",
            "ResourceType": "VirtualMachine",
            "Resources": ["FrontEnd_IN_0"],
            "EventStatus": "Scheduled",
            "NotBefore": "Mon, 19 Sep 2016 18:40:00 GMT",
            "Description": "Host server is undergoing maintenance.",
            "EventSource": "Platform",
            "DurationInSeconds": 9
        },
        {
            "EventId": "602d9444-d2cd-49c7-8624-8643e7171297",
            "EventType": "Preempt",
            "ResourceType": "VirtualMachine",
            "Resources": ["BackEnd_IN_0", "spot-vm-7"],
            "EventStatus": "Scheduled",
            "NotBefore": "Mon, 19 Sep 2016 18:29:47 GMT",
            "Description": "",
            "EventSource": "Platform",
            "DurationInSeconds": -1
        }
    ]
}"""


def test_azure_preempt_for_this_vm() -> None:
    notice = parse_azure_events(200, AZURE_DOC, NOW, "spot-vm-7")
    assert notice is not None
    assert notice.kind == "terminate"
    assert notice.deadline == ts("2016-09-19T18:29:47")
    assert notice.received_at == NOW
    assert notice.key.startswith("azure:602d9444-d2cd-49c7-8624-8643e7171297|Scheduled|")
    # Resource names are case-insensitive in Azure.
    assert parse_azure_events(200, AZURE_DOC, NOW, "SPOT-VM-7") == notice


def test_azure_events_for_other_vms_or_of_other_types_are_no_notice() -> None:
    assert parse_azure_events(200, AZURE_DOC, NOW, "FrontEnd_IN_0") is None  # a Reboot, not a Preempt
    assert parse_azure_events(200, AZURE_DOC, NOW, "someone-else") is None
    assert parse_azure_events(200, b'{"DocumentIncarnation": 1, "Events": []}', NOW, "spot-vm-7") is None


def test_azure_started_event_has_a_blank_not_before_and_a_new_key() -> None:
    started = b"""{"DocumentIncarnation": 3, "Events": [{"EventId": "e1", "EventType": "Preempt",
        "ResourceType": "VirtualMachine", "Resources": ["vm"], "EventStatus": "Started", "NotBefore": ""}]}"""
    scheduled = started.replace(
        b'"Started", "NotBefore": ""', b'"Scheduled", "NotBefore": "Mon, 19 Sep 2016 18:29:47 GMT"'
    )
    first = parse_azure_events(200, scheduled, NOW, "vm")
    second = parse_azure_events(200, started, NOW + 20, "vm")
    assert first is not None
    assert second is not None
    assert second.deadline == NOW + 20
    assert first.key != second.key


def test_azure_earliest_of_two_preempts_and_iso_times() -> None:
    doc = b"""{"Events": [
        {"EventId": "a", "EventType": "Preempt", "Resources": ["vm"], "NotBefore": "2024-01-15T12:00:30Z"},
        {"EventId": "b", "EventType": "Preempt", "Resources": ["vm"],
         "NotBefore": "Mon, 15 Jan 2024 12:00:10 GMT"}
    ]}"""
    notice = parse_azure_events(200, doc, NOW, "vm")
    assert notice is not None
    assert notice.deadline == ts("2024-01-15T12:00:10")
    assert notice.key.startswith("azure:b|")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "scheduledevents"),
        (b'{"DocumentIncarnation": 1}', "scheduledevents.Events"),
        (b'{"Events": {}}', "scheduledevents.Events"),
        (b'{"Events": [7]}', "scheduledevents.Events[0]"),
        (b'{"Events": [{"Resources": ["vm"]}]}', "scheduledevents.Events[0].EventType"),
        (b'{"Events": [{"EventType": "Preempt", "Resources": "vm"}]}', "scheduledevents.Events[0].Resources"),
        (
            b'{"Events": [{"EventType": "Preempt", "Resources": ["vm"], "NotBefore": "x"}]}',
            "scheduledevents.Events[0].EventId",
        ),
        (
            b'{"Events": [{"EventId": "e", "EventType": "Preempt", "Resources": ["vm"], "NotBefore": "?"}]}',
            "scheduledevents.Events[0].NotBefore",
        ),
        (
            b'{"Events": [{"EventId": "e", "EventType": "Preempt", "Resources": ["vm"], "NotBefore": 5}]}',
            "scheduledevents.Events[0].NotBefore",
        ),
    ],
)
def test_azure_malformed_answers_name_the_field(body: bytes, field: str) -> None:
    with pytest.raises(MetadataError) as excinfo:
        parse_azure_events(200, body, NOW, "vm")
    assert field_of(excinfo) == field
    assert str(excinfo.value).startswith(field + ":")


def test_azure_unexpected_status() -> None:
    with pytest.raises(MetadataError, match="scheduledevents: HTTP 400"):
        parse_azure_events(400, b"Bad request. Required metadata header not specified", NOW, "vm")


# Shared


def test_instance_ids() -> None:
    assert parse_instance_id("meta-data/instance-id", 200, b"i-1234567890abcdef0") == "i-1234567890abcdef0"
    assert parse_instance_id("instance/name", 200, b"spot-a100-7\n") == "spot-a100-7"
    for status, body, problem in [
        (404, b"", "HTTP 404"),
        (200, b"  ", "empty"),
        (200, b"a b", "contains spaces or control characters"),
        (200, b"x" * 129, "longer than 128 characters"),
        (200, b"\xff", "not UTF-8"),
    ]:
        with pytest.raises(MetadataError) as excinfo:
            parse_instance_id("instance/name", status, body)
        assert excinfo.value.field == "instance/name"
        assert excinfo.value.problem == problem
    assert check_instance_id("--instance-id", " vm-1 ") == "vm-1"


def test_time_formats() -> None:
    assert parse_iso_time("t", "2017-09-18T08:22:00Z") == ts("2017-09-18T08:22:00")
    assert parse_iso_time("t", "2017-09-18T10:22:00+02:00") == ts("2017-09-18T08:22:00")
    assert parse_http_date("t", "Mon, 19 Sep 2016 18:29:47 GMT") == ts("2016-09-19T18:29:47")
    with pytest.raises(MetadataError, match=r"^t: not an HTTP date \(Mon, 99 Sep\)$"):
        parse_http_date("t", "Mon, 99 Sep")
