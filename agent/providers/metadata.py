"""Cloud metadata answers → preemption notices: pure parsing, one set of functions per provider.

Each parser takes what the metadata service answered (HTTP status and body bytes) and the time the sidecar
read it, and returns a :class:`Notice`, ``None`` ("no notice yet"), or raises :class:`MetadataError`
naming the field that was wrong. No I/O, no asyncio: :mod:`agent.providers.sidecar` does the requests.

A :class:`Notice` carries a ``key``: its identity in the provider's document (action and time, event id
and status, ...), never a time the sidecar measured, so the same notice read twice has the same key and
is published once, while a changed notice (rebalance → terminate, a new ``NotBefore``) is published again.

Formats, as verified against the providers' documentation:

AWS (IMDSv2). A session token from ``PUT /latest/api/token`` with header
``X-aws-ec2-metadata-token-ttl-seconds``, sent back as ``X-aws-ec2-metadata-token``; an expired token is
answered 401 (the sidecar then takes a new one).
``GET /latest/meta-data/spot/instance-action``: 404 while no interruption is planned; 200 with
``{"action": "terminate"|"stop"|"hibernate", "time": "2017-09-18T08:22:00Z"}`` (approximate UTC time of the
action, about two minutes ahead). Hibernation "begins immediately", with no two-minute warning, and leaves
the instance ``stopped``: kind ``stop``, deadline no later than the time it was read.
``GET /latest/meta-data/events/recommendations/rebalance``: 404 until a rebalance recommendation is
emitted, then 200 with ``{"noticeTime": "2020-10-27T08:22:00Z"}``; no deadline is promised, so (as
schemas.preemption says) the deadline is the time the sidecar read it. The instance id is
``GET /latest/meta-data/instance-id``.
Sources: AWS EC2 User Guide, "Spot Instance interruption notices"
(docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html, also
awsdocs/amazon-ec2-user-guide doc_source/spot-instance-termination-notices.md), "EC2 instance rebalance
recommendations" (docs.aws.amazon.com/AWSEC2/latest/UserGuide/rebalance-recommendations.html), and
"Find interrupted Spot Instances" (a hibernated Spot Instance's state is ``stopped``).

GCP. ``GET /computeMetadata/v1/instance/preempted`` with header ``Metadata-Flavor: Google`` answers
``TRUE`` once the VM is being preempted, ``FALSE`` before. The sidecar reads it once, then long-polls with
``?wait_for_change=true&last_etag=<ETag of the last answer>&timeout_sec=N``: the server answers as soon as
the value differs from that version, or after ``timeout_sec`` with the same value, so a change between two
reads is never missed (the pattern of google-cloud-go's ``compute/metadata.Subscribe``). The notice gives
the guest about 30 s before the ACPI soft-off (:data:`GCP_NOTICE_SECONDS`; Spot VMs created with a longer
preemption notice period, e.g. 120 s, need ``--gcp-notice-seconds``): deadline = read time + that.
The instance is named by ``GET /computeMetadata/v1/instance/name`` (the name the Compute API, gcloud and
Kubernetes node names use; ``instance/id`` is the numeric id).
Sources: Compute Engine docs "Preemptible VM instances" / "Create and use Spot VMs — detect preemption"
(cloud.google.com/compute/docs/instances/preemptible, .../create-use-spot#handle-preemption), "View and
query VM metadata" (cloud.google.com/compute/docs/metadata/querying-metadata: wait_for_change, ETags,
timeout_sec), google-cloud-go compute/metadata/metadata.go ``Subscribe``.

Azure Scheduled Events. ``GET /metadata/scheduledevents?api-version=2020-07-01`` with header
``Metadata: true`` answers ``{"DocumentIncarnation": n, "Events": [{"EventId", "EventType":
"Reboot"|"Redeploy"|"Freeze"|"Preempt"|"Terminate", "ResourceType": "VirtualMachine", "Resources":
[names], "EventStatus": "Scheduled"|"Started", "NotBefore": "Mon, 19 Sep 2016 18:29:47 GMT",
"Description", "EventSource", "DurationInSeconds"}]}``; an empty ``Events`` means nothing is scheduled.
Events reach every VM of an availability set or scale-set placement group, so only ``Preempt`` events whose
``Resources`` name this VM count (kind ``terminate``: a Spot VM eviction deletes it); ``NotBefore`` (at least
30 s ahead for Preempt) is the deadline, and it is blank once the event has started: deadline = read time.
The first request may take up to two minutes (it enables the service). The VM's name is
``GET /metadata/instance/compute/name?api-version=2021-02-01&format=text``.
Sources: Azure docs "Azure Metadata Service: Scheduled Events for Linux VMs"
(learn.microsoft.com/azure/virtual-machines/linux/scheduled-events, MicrosoftDocs/azure-docs
articles/virtual-machines/linux/scheduled-events.md).
"""

from __future__ import annotations

import email.utils
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import msgspec

from schemas.preemption import NoticeKind

ProviderName = Literal["aws", "gcp", "azure"]
PROVIDERS: Final[tuple[ProviderName, ...]] = ("aws", "gcp", "azure")

DEFAULT_METADATA_URLS: Final[dict[ProviderName, str]] = {
    "aws": "http://169.254.169.254",
    "gcp": "http://metadata.google.internal",
    "azure": "http://169.254.169.254",
}

GCP_NOTICE_SECONDS: Final = 30.0
"""Seconds from ``preempted`` turning TRUE to the VM's soft-off: Compute Engine's default notice."""

# AWS IMDSv2
AWS_TOKEN_PATH: Final = "/latest/api/token"
AWS_TOKEN_TTL_HEADER: Final = "X-aws-ec2-metadata-token-ttl-seconds"
AWS_TOKEN_HEADER: Final = "X-aws-ec2-metadata-token"
AWS_TOKEN_TTL_SECONDS: Final = 21600
AWS_INSTANCE_ACTION_PATH: Final = "/latest/meta-data/spot/instance-action"
AWS_REBALANCE_PATH: Final = "/latest/meta-data/events/recommendations/rebalance"
AWS_INSTANCE_ID_PATH: Final = "/latest/meta-data/instance-id"

# GCP
GCP_HEADERS: Final = {"Metadata-Flavor": "Google"}
GCP_PREEMPTED_PATH: Final = "/computeMetadata/v1/instance/preempted"
GCP_INSTANCE_NAME_PATH: Final = "/computeMetadata/v1/instance/name"

# Azure
AZURE_HEADERS: Final = {"Metadata": "true"}
AZURE_EVENTS_PATH: Final = "/metadata/scheduledevents?api-version=2020-07-01"
AZURE_INSTANCE_NAME_PATH: Final = "/metadata/instance/compute/name?api-version=2021-02-01&format=text"

_MAX_ID_LENGTH: Final = 128  # schemas.envelope.Key
_AWS_ACTIONS: Final[dict[str, NoticeKind]] = {"terminate": "terminate", "stop": "stop", "hibernate": "stop"}
_AZURE_FINISHED: Final = frozenset({"completed", "canceled", "cancelled"})


class MetadataError(ValueError):
    """A metadata answer the sidecar cannot use. ``field`` names the part that was wrong, ``problem`` says
    how (a short fixed phrase: a log kind), ``detail`` gives the offending value."""

    def __init__(self, field: str, problem: str, detail: str = "") -> None:
        self.field = field
        self.problem = problem
        self.detail = detail[:200]
        super().__init__(f"{field}: {problem}" + (f" ({self.detail})" if self.detail else ""))


@dataclass(frozen=True, slots=True)
class Notice:
    """A preemption notice read from a metadata service: ``deadline`` and ``received_at`` (when it was
    read) in UNIX seconds; ``key`` is its identity in the provider's document (equal keys: the same
    notice)."""

    kind: NoticeKind
    deadline: float
    received_at: float
    key: str


# Shared helpers


def _text(field: str, body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MetadataError(field, "not UTF-8", f"{err.reason} at byte {err.start}") from None


def _json_object(field: str, body: bytes) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as err:
        raise MetadataError(field, "not JSON", str(err)) from None
    if not isinstance(value, dict):
        raise MetadataError(field, "not a JSON object", type(value).__name__)
    return value


def _string(field: str, obj: dict[str, Any], name: str) -> str:
    if name not in obj:
        raise MetadataError(f"{field}.{name}", "missing")
    value = obj[name]
    if not isinstance(value, str):
        raise MetadataError(f"{field}.{name}", "not a string", repr(value))
    return value


def _unix(field: str, moment: datetime, raw: str) -> float:
    if moment.tzinfo is None:  # documented as UTC; older AWS examples omit the "Z"
        moment = moment.replace(tzinfo=UTC)
    seconds = moment.timestamp()
    if not math.isfinite(seconds) or seconds < 0:
        raise MetadataError(field, "time before 1970", raw)
    return seconds


def parse_iso_time(field: str, raw: str) -> float:
    """``2017-09-18T08:22:00Z`` (UTC when no offset is given) → UNIX seconds."""
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise MetadataError(field, "not an ISO 8601 time", raw) from None
    return _unix(field, moment, raw)


def parse_http_date(field: str, raw: str) -> float:
    """``Mon, 19 Sep 2016 18:29:47 GMT`` (RFC 1123, as Azure writes NotBefore) → UNIX seconds.

    An ISO 8601 time is accepted too: some accounts of Scheduled Events show one.
    """
    try:
        moment = email.utils.parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        try:
            moment = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise MetadataError(field, "not an HTTP date", raw) from None
    return _unix(field, moment, raw)


def _unexpected_status(field: str, status: int) -> MetadataError:
    return MetadataError(field, f"HTTP {status}")


def parse_instance_id(field: str, status: int, body: bytes) -> str:
    """A plain-text instance id or name (AWS instance-id, GCP instance/name, Azure compute/name)."""
    if status != 200:
        raise _unexpected_status(field, status)
    return check_instance_id(field, _text(field, body))


def check_instance_id(field: str, raw: str) -> str:
    """An instance id as a message key: 1 to 128 printable characters, no spaces (surrounding ones are
    stripped)."""
    value = raw.strip()
    if not value:
        raise MetadataError(field, "empty")
    if len(value) > _MAX_ID_LENGTH:
        raise MetadataError(field, f"longer than {_MAX_ID_LENGTH} characters", value)
    if not value.isprintable() or any(c.isspace() for c in value):
        raise MetadataError(field, "contains spaces or control characters", repr(value))
    return value


# AWS


def parse_aws_token(status: int, body: bytes) -> str:
    """The IMDSv2 session token from ``PUT /latest/api/token``."""
    field = "api/token"
    if status != 200:
        raise _unexpected_status(field, status)
    token = _text(field, body).strip()
    if not token or not token.isprintable() or any(c.isspace() for c in token):
        raise MetadataError(field, "not a token", repr(token[:40]))
    return token


def parse_aws_instance_action(status: int, body: bytes, received_at: float) -> Notice | None:
    """``spot/instance-action``: 404 → no notice; 200 → terminate/stop (hibernate counts as stop)."""
    field = "spot/instance-action"
    if status == 404:
        return None
    if status != 200:
        raise _unexpected_status(field, status)
    doc = _json_object(field, body)
    action = _string(field, doc, "action")
    kind = _AWS_ACTIONS.get(action)
    if kind is None:
        raise MetadataError(f"{field}.action", "unknown action", action)
    raw_time = _string(field, doc, "time")
    deadline = parse_iso_time(f"{field}.time", raw_time)
    if action == "hibernate":  # hibernation begins at once: no two-minute warning
        deadline = min(deadline, received_at)
    return Notice(kind=kind, deadline=deadline, received_at=received_at, key=f"aws:{action}@{raw_time}")


def parse_aws_rebalance(status: int, body: bytes, received_at: float) -> Notice | None:
    """``events/recommendations/rebalance``: 404 → none; 200 → a rebalance recommendation, whose deadline
    is the time it was read (no deadline is promised)."""
    field = "events/recommendations/rebalance"
    if status == 404:
        return None
    if status != 200:
        raise _unexpected_status(field, status)
    doc = _json_object(field, body)
    raw_time = _string(field, doc, "noticeTime")
    parse_iso_time(f"{field}.noticeTime", raw_time)  # validated, not used: the deadline is "now"
    return Notice(
        kind="rebalance", deadline=received_at, received_at=received_at, key=f"aws:rebalance@{raw_time}"
    )


# GCP


def parse_gcp_preempted(
    status: int, body: bytes, received_at: float, notice_s: float = GCP_NOTICE_SECONDS
) -> Notice | None:
    """``instance/preempted``: ``FALSE`` → no notice; ``TRUE`` → terminate at ``received_at + notice_s``."""
    field = "instance/preempted"
    if status != 200:
        raise _unexpected_status(field, status)
    value = _text(field, body).strip()
    if value.upper() == "FALSE":
        return None
    if value.upper() == "TRUE":
        return Notice(
            kind="terminate", deadline=received_at + notice_s, received_at=received_at, key="gcp:preempted"
        )
    raise MetadataError(field, "neither TRUE nor FALSE", repr(value[:40]))


# Azure


def parse_azure_events(status: int, body: bytes, received_at: float, vm_name: str) -> Notice | None:
    """Scheduled Events: the ``Preempt`` event naming ``vm_name`` in ``Resources`` (the earliest, if
    several), or ``None``. ``NotBefore`` is the deadline; blank (the event started) → ``received_at``."""
    field = "scheduledevents"
    if status != 200:
        raise _unexpected_status(field, status)
    doc = _json_object(field, body)
    if "Events" not in doc:
        raise MetadataError(f"{field}.Events", "missing")
    events = doc["Events"]
    if not isinstance(events, list):
        raise MetadataError(f"{field}.Events", "not a list", type(events).__name__)
    me = vm_name.casefold()  # Azure resource names are case-insensitive
    found: Notice | None = None
    for i, event in enumerate(events):
        where = f"{field}.Events[{i}]"
        if not isinstance(event, dict):
            raise MetadataError(where, "not a JSON object", type(event).__name__)
        if _string(where, event, "EventType") != "Preempt":
            continue
        resources = event.get("Resources")
        if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
            raise MetadataError(f"{where}.Resources", "not a list of names", repr(resources)[:80])
        if me not in (r.casefold() for r in resources):
            continue  # another VM of the availability set or scale set
        event_status = event.get("EventStatus", "")
        if not isinstance(event_status, str):
            raise MetadataError(f"{where}.EventStatus", "not a string", repr(event_status))
        if event_status.casefold() in _AZURE_FINISHED:
            continue
        event_id = _string(where, event, "EventId")
        not_before = event.get("NotBefore", "")
        if not isinstance(not_before, str):
            raise MetadataError(f"{where}.NotBefore", "not a string", repr(not_before))
        deadline = parse_http_date(f"{where}.NotBefore", not_before) if not_before.strip() else received_at
        notice = Notice(
            kind="terminate",
            deadline=deadline,
            received_at=received_at,
            key=f"azure:{event_id}|{event_status}|{not_before}",
        )
        if found is None or notice.deadline < found.deadline:
            found = notice
    return found
