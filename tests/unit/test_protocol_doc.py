"""docs/protocol.md cannot drift from the code: every message, nested Struct, field and subject is in it,
each field says what it means, and every table between ``<!-- generated -->`` markers is exactly what the
Structs and ``agent/subjects.py`` give today (``cost-agent schemas`` rewrites them, ``--check`` fails)."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
import pytest

from agent.generated import PROTOCOL_DOC, ROOT
from agent.protocol_doc import (
    SUBJECTS,
    description,
    documented_structs,
    field_table,
    markers,
    nested_structs,
    own_fields,
    render_doc,
    subject_functions,
    subject_pattern,
    type_name,
)
from agent.subjects import Subjects
from schemas import MESSAGE_TYPES, InflightRequest, SpotPrice, Target, WorkerAck, WorkerMetrics, tag_of
from schemas.envelope import Message

PAGE = (ROOT / PROTOCOL_DOC).read_text(encoding="utf-8")
ON_THE_PAGE = markers(PAGE)


def _field(kind: type[msgspec.Struct], name: str) -> msgspec.structs.FieldInfo:
    return next(f for f in msgspec.structs.fields(kind) if f.name == name)


# --- the page is complete and current ----------------------------------------------------------------


@pytest.mark.parametrize("kind", MESSAGE_TYPES, ids=tag_of)
def test_every_message_type_has_its_field_table_on_the_page(kind: type[Message]) -> None:
    assert f"fields {tag_of(kind)}" in ON_THE_PAGE


@pytest.mark.parametrize("struct", nested_structs(), ids=lambda s: s.__name__)
def test_every_struct_inside_a_message_has_its_field_table_on_the_page(struct: type[msgspec.Struct]) -> None:
    assert f"fields {struct.__name__}" in ON_THE_PAGE


def test_the_envelope_and_the_type_names_have_their_tables() -> None:
    assert "fields envelope" in ON_THE_PAGE
    assert "types" in ON_THE_PAGE


@pytest.mark.parametrize("name", sorted(documented_structs()))
def test_every_field_says_what_it_means(name: str) -> None:
    kind = documented_structs()[name]
    undocumented = [f.name for f in own_fields(kind) if not description(f)]
    assert undocumented == [], f"{name}: add doc('...') to {', '.join(undocumented)} in schemas/"


def test_every_subject_function_is_documented_and_in_the_full_subject_table() -> None:
    documented = {doc.name for doc in SUBJECTS} | {doc.pattern for doc in SUBJECTS if doc.pattern}
    assert sorted(documented) == sorted(subject_functions())
    assert "subjects" in ON_THE_PAGE  # the table of every subject, not only a selection
    for doc in SUBJECTS:
        assert f"| `{subject_pattern(doc.name)}`" in PAGE


def test_every_message_type_travels_on_a_documented_subject() -> None:
    carried = {kind for doc in SUBJECTS for kind in (*doc.messages, *doc.replies)}
    carried |= {reply for doc in SUBJECTS for op in doc.ops for reply in op.replies}
    assert sorted(map(tag_of, set(MESSAGE_TYPES) - carried)) == []


def test_every_operation_of_a_request_subject_is_on_the_page() -> None:
    for doc in SUBJECTS:
        for op in doc.ops:
            assert f"`{op.name}`" in PAGE
            assert op.request in doc.messages


def test_the_hand_written_worker_op_table_names_the_same_requests_and_replies_as_the_code() -> None:
    # The op table (who sends each op to whom) stays prose; its request and reply columns must agree.
    table = PAGE[PAGE.index("| op | sent to | by | request | reply |") :].split("\n\n")[0]
    code = [[re.findall(r"`([^`]+)`", cell) for cell in row.split(" | ")] for row in table.splitlines()[2:]]
    written = {op[0]: (request[0], reply[0]) for op, _, _, request, reply in code}
    worker_ops = next(doc for doc in SUBJECTS if doc.name == "worker_request").ops

    assert written == {op.name: (tag_of(op.request), tag_of(op.replies[0])) for op in worker_ops}


# --- what the tables say ----------------------------------------------------------------------------------


def test_a_subject_pattern_names_the_namespace_and_each_key_of_the_real_subject() -> None:
    subjects = Subjects("prod.us1")
    for name in subject_functions():
        pattern = subject_pattern(name)
        keys = re.findall(r"\{(\w+)\}", pattern)[1:]
        member = getattr(subjects, name)
        built = member(*(f"k{i}" for i in range(len(keys)))) if callable(member) else member
        expected = pattern.replace("{ns}", "prod.us1")
        for i, key in enumerate(keys):
            expected = expected.replace(f"{{{key}}}", f"k{i}")
        assert built == expected


def test_the_worker_protocol_subject_has_two_keys() -> None:
    assert subject_pattern("worker_request") == "{ns}.req.worker.{worker_id}.{op}"
    assert subject_pattern("worker_requests_all") == "{ns}.req.worker.{worker_id}.*"
    assert subject_pattern("plan_tick") == "{ns}.cmd.plan.tick"


def test_types_read_as_the_page_names_them_with_any_further_constraint_written_out() -> None:
    assert type_name(_field(WorkerMetrics, "worker_id").type) == "*id*"
    assert type_name(_field(WorkerMetrics, "tier").type) == "*tier*"
    assert type_name(_field(WorkerMetrics, "interval_s").type) == "*interval*"
    assert type_name(_field(WorkerMetrics, "sent_at").type) == "*time*"
    assert type_name(_field(SpotPrice, "available").type) == "*nodes* \\| null"
    assert type_name(_field(SpotPrice, "reclaim_per_hour").type) == "*fraction* \\| null"
    assert type_name(_field(WorkerAck, "detail").type) == "*free text*"
    assert type_name(_field(Target, "count").type) == "*nodes*"
    assert type_name(_field(InflightRequest, "kv_bytes").type) == "*bytes*"


def test_a_field_row_gives_type_default_and_the_structs_own_description() -> None:
    table = field_table(WorkerMetrics)

    assert "| `in_flight` | *requests* | `0` | Gauge at `sent_at`: requests being processed. |" in table
    assert "| `interval_s` | *interval* | required | Length in seconds of the interval" in table
    assert "`msg_id`" not in table  # the envelope has its own table


class _Odd(msgspec.Struct, frozen=True):
    choice: Annotated[str, msgspec.Meta(description="A or B:\n  `a | b`.")]


def test_a_description_is_one_line_and_cannot_break_the_table() -> None:
    assert description(_field(_Odd, "choice")) == "A or B: `a \\| b`."


# --- regenerating (the drift check over every generated file: tests/unit/test_generated.py) ----------------


def test_the_page_is_what_its_markers_render() -> None:
    assert render_doc(PAGE) == PAGE


def test_a_hand_edited_table_is_rewritten_and_the_prose_is_kept() -> None:
    edited = PAGE.replace("Gauge at `sent_at`: requests waiting.", "Requests waiting (edited by hand).", 1)
    assert edited != PAGE

    assert render_doc(edited) == PAGE


def test_a_table_for_a_new_message_is_filled_in_where_its_marker_is_placed() -> None:
    text = "Prose before.\n<!-- generated: fields spot.price.v1 -->\n<!-- end generated -->\nProse after.\n"

    rendered = render_doc(text)

    assert rendered.startswith("Prose before.\n<!-- generated: fields spot.price.v1 -->\n| field |")
    assert rendered.endswith("<!-- end generated -->\nProse after.\n")
    assert "| `price_hourly` | *price* | required | The spot price, in $/h per node." in rendered


@pytest.mark.parametrize("what", ["fields spot.price.v9", "fields", "tables", "subjects no_such_subject"])
def test_a_marker_naming_nothing_known_is_an_error(what: str) -> None:
    with pytest.raises(ValueError, match=r"no_such_subject|unknown generated block"):
        render_doc(f"<!-- generated: {what} -->\n<!-- end generated -->\n")
