"""NATS subjects: their form, the escaping of keys, namespaces, metric labels, and that no other module
writes a subject by hand."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import agent
from agent.subjects import DEFAULT_NAMESPACE, Subjects, check_namespace, escape_key, unescape_key

AGENT = Path(agent.__file__).resolve().parent
SUBJECTS_FILE = AGENT / "subjects.py"
S = Subjects("costagent")

# {ns}.{evt|cmd|req}.{domain}.{name}[.{key}]: lowercase words, then at most one key token.
FORM = re.compile(r"^costagent\.(evt|cmd|req)\.[a-z_]+\.[a-z_]+(\.[A-Za-z0-9_%-]+)?$")


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching with ``*`` (one token) and ``>`` (one or more trailing tokens)."""
    pattern_tokens, subject_tokens = pattern.split("."), subject.split(".")
    for i, token in enumerate(pattern_tokens):
        if token == ">":
            return len(subject_tokens) > i
        if i >= len(subject_tokens) or token not in ("*", subject_tokens[i]):
            return False
    return len(pattern_tokens) == len(subject_tokens)


# --- the subjects ------------------------------------------------------------------------------------

FIXED = {
    "plan_allocation": "costagent.evt.plan.allocation",
    "plan_tick": "costagent.cmd.plan.tick",
    "demand_snapshot": "costagent.evt.demand.snapshot",
    "cost_report": "costagent.evt.cost.report",
    "cost_report_request": "costagent.req.cost.report",
    "worker_metrics_all": "costagent.evt.worker.metrics.*",
    "spot_price_all": "costagent.evt.spot.price.*",
    "fleet_instance_all": "costagent.evt.fleet.instance.*",
    "spot_notice_all": "costagent.evt.spot.notice.*",
    "spot_drain_all": "costagent.evt.spot.drain.*",
    "migration_report_all": "costagent.evt.migration.report.*",
    "router_command_all": "costagent.cmd.router.*",
    "request_update_all": "costagent.evt.request.update.*",
}
KEYED: dict[str, tuple[Callable[[str], str], str]] = {
    "worker_metrics": (S.worker_metrics, "costagent.evt.worker.metrics.w-7"),
    "spot_price": (S.spot_price, "costagent.evt.spot.price.w-7"),
    "fleet_instance": (S.fleet_instance, "costagent.evt.fleet.instance.w-7"),
    "spot_notice": (S.spot_notice, "costagent.evt.spot.notice.w-7"),
    "spot_drain": (S.spot_drain, "costagent.evt.spot.drain.w-7"),
    "migration_report": (S.migration_report, "costagent.evt.migration.report.w-7"),
    "request_update": (S.request_update, "costagent.evt.request.update.w-7"),
}
# Operations, not keys: the router's commands are ``{ns}.cmd.router.{op}``; the worker protocol is
# ``{ns}.req.worker.{worker_id}.{op}``.
OPERATIONS = {
    "router_command": (S.router_command("stop_routing"), "costagent.cmd.router.stop_routing"),
    "worker_request": (S.worker_request("w-7", "inflight"), "costagent.req.worker.w-7.inflight"),
    "worker_requests_all": (S.worker_requests_all("w-7"), "costagent.req.worker.w-7.*"),
}


@pytest.mark.parametrize(("name", "built", "subject"), [(n, b, s) for n, (b, s) in OPERATIONS.items()])
def test_each_operation_subject(name: str, built: str, subject: str) -> None:
    assert built == subject


PATTERN_OF = {
    "worker_metrics": S.worker_metrics_all,
    "spot_price": S.spot_price_all,
    "fleet_instance": S.fleet_instance_all,
    "spot_notice": S.spot_notice_all,
    "spot_drain": S.spot_drain_all,
    "migration_report": S.migration_report_all,
    "request_update": S.request_update_all,
}


@pytest.mark.parametrize(("name", "subject"), FIXED.items())
def test_each_fixed_subject_and_pattern(name: str, subject: str) -> None:
    assert getattr(S, name) == subject


@pytest.mark.parametrize(("name", "build", "subject"), [(n, b, s) for n, (b, s) in KEYED.items()])
def test_each_keyed_subject_puts_its_key_last(name: str, build: Callable[[str], str], subject: str) -> None:
    assert build("w-7") == subject


def test_every_subject_has_the_documented_form() -> None:
    built = [
        *(v for k, v in FIXED.items() if not k.endswith("_all")),
        *(b("i.0 *>") for b, _ in KEYED.values()),
    ]

    assert [s for s in built if not FORM.match(s)] == []


def test_the_table_above_covers_every_public_subject() -> None:
    # A new subject added to Subjects must be added here too, so its form is checked.
    public = {name for name in dir(Subjects) if not name.startswith("_")} - {"ns", "label"}
    assert public == set(FIXED) | set(KEYED) | set(OPERATIONS)


def test_a_worker_request_carries_the_worker_and_the_verb_as_two_escaped_tokens() -> None:
    assert S.worker_request("w.1", "drain now") == "costagent.req.worker.w%2E1.drain%20now"


@pytest.mark.parametrize("kind", PATTERN_OF)
@given(key=st.text(min_size=1, max_size=20))
def test_the_all_pattern_matches_every_key_and_nothing_else(kind: str, key: str) -> None:
    subject = KEYED[kind][0](key)

    assert matches(PATTERN_OF[kind], subject)
    assert not matches(PATTERN_OF[kind], subject + ".more")
    assert [p for other, p in PATTERN_OF.items() if other != kind and matches(p, subject)] == []


def test_the_default_namespace() -> None:
    assert Subjects().ns == DEFAULT_NAMESPACE == "costagent"


def test_the_namespace_comes_first_so_one_permission_covers_everything() -> None:
    subjects = Subjects("team-a.prod")
    built = [subjects.plan_allocation, subjects.cost_report_request, subjects.fleet_instance("i-1")]

    assert all(matches("team-a.prod.>", s) for s in built)
    assert not any(matches("costagent.>", s) for s in built)


# --- keys --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "token"),
    [
        ("i-0abc_123", "i-0abc_123"),  # safe characters stay as they are
        ("i-0abc.def", "i-0abc%2Edef"),
        ("a*b>c", "a%2Ab%3Ec"),
        ("two words\tand\na line", "two%20words%09and%0Aa%20line"),
        ("100%", "100%25"),  # the escape character escapes itself
        ("zone/é", "zone%2F%C3%A9"),  # UTF-8 bytes
    ],
)
def test_escape_key_makes_one_token(key: str, token: str) -> None:
    assert escape_key(key) == token
    assert unescape_key(token) == key


def test_an_empty_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        escape_key("")


@given(key=st.text(min_size=1))
def test_any_key_escapes_to_one_safe_token_and_back(key: str) -> None:
    token = escape_key(key)

    assert token
    assert re.fullmatch(r"[A-Za-z0-9_%-]+", token)  # so no '.', '*', '>' or whitespace
    assert unescape_key(token) == key


@given(a=st.text(min_size=1), b=st.text(min_size=1))
def test_different_keys_give_different_subjects(a: str, b: str) -> None:
    assert (S.fleet_instance(a) == S.fleet_instance(b)) == (a == b)


# --- namespaces --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ns", ["costagent", "test-1_x", "team.prod", "a"])
def test_good_namespaces(ns: str) -> None:
    assert check_namespace(ns) == ns
    assert Subjects(ns).ns == ns


@pytest.mark.parametrize(
    "ns",
    ["", "CostAgent", "a..b", ".a", "a.", "a b", "a*", "ns.>", "a\n", "a\tb", "é", "a/b"],
)
def test_bad_namespaces_are_rejected(ns: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        check_namespace(ns)
    with pytest.raises(ValueError, match="namespace"):
        Subjects(ns)


# --- labels ------------------------------------------------------------------------------------------


def test_label_strips_the_namespace() -> None:
    subjects = Subjects("team.prod")

    assert subjects.label(subjects.worker_metrics_all) == "evt.worker.metrics.*"
    assert subjects.label(subjects.plan_tick) == "cmd.plan.tick"


def test_label_leaves_a_subject_of_another_namespace_alone() -> None:
    subjects = Subjects("cost")

    # "costagent." starts with "cost" but not with the namespace "cost." followed by a token boundary.
    assert subjects.label("costagent.evt.plan.allocation") == "costagent.evt.plan.allocation"
    assert subjects.label("other.evt.plan.allocation") == "other.evt.plan.allocation"


# --- no subject strings elsewhere --------------------------------------------------------------------

MARKERS = (".evt.", ".cmd.", ".req.")


def docstring_nodes(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings: prose about subjects, not subjects."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def subject_literals(source: str) -> list[str]:
    """String constants (f-string parts included) that look like a subject, docstrings excepted."""
    tree = ast.parse(source)
    docstrings = docstring_nodes(tree)
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and any(marker in node.value for marker in MARKERS)
    ]


def test_the_literal_finder_sees_plain_and_f_strings_but_not_docstrings() -> None:
    source = (
        '"""Listens to ``{ns}.evt.worker.metrics.*``."""\n'
        "def f(ns):\n"
        '    """Publishes ``{ns}.cmd.plan.tick``."""\n'
        '    a = "costagent.evt.plan.allocation"\n'
        '    b = f"{ns}.req.cost.report"\n'
        '    c = "plan.allocation.v1"\n'
        "    return a, b, c\n"
    )
    assert subject_literals(source) == ["costagent.evt.plan.allocation", ".req.cost.report"]


AGENT_FILES = sorted(p for p in AGENT.rglob("*.py") if p != SUBJECTS_FILE)


def test_no_module_but_subjects_writes_a_subject() -> None:
    assert len(AGENT_FILES) > 10  # the scan really reads the package
    found = {
        str(path.relative_to(AGENT)): literals
        for path in AGENT_FILES
        if (literals := subject_literals(path.read_text(encoding="utf-8")))
    }
    assert found == {}
