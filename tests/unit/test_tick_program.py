"""The tick's integer program reads like its documentation: every constraint name the optimizer can report
is the name of one function in ``agent.core.tick_program`` that builds exactly those rows, and whose
docstring says what they guarantee; the optimizer's own docstring lists every family.
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np

import agent.core.optimizer
from agent.config import resolve_catalog
from agent.core import tick_program
from agent.core.capacity import SloConfig
from agent.core.catalog import Catalog
from agent.core.demand import Demand
from agent.core.optimizer import Fleet, OptimizerConfig, SpotMarket, TickInput, optimize_tick

H100 = resolve_catalog("seed").type("h100_8x")
# Every family active: two zones (zone loss, pool shares), a quota, a floor, held nodes to step from.
CATALOG = Catalog(
    name="two-zones",
    types={"h100_8x": dataclasses.replace(H100, pools=("a", "b"), max_instances=40)},
)
EVERY_RULE = OptimizerConfig(
    min_non_spot_instances=2, min_non_spot_fraction=0.3, max_pool_share=0.6, survive_zone_loss=0.5
)
FLEET = Fleet(spot={("h100_8x", "a"): 3, ("h100_8x", "b"): 2}, ondemand={("h100_8x", "b"): 3})
INPUT = TickInput(Demand(30.0, 1500, 500), Demand(40.0, 1500, 500), FLEET, SpotMarket())


def problem() -> tick_program.Problem:
    return agent.core.optimizer._problem(CATALOG, INPUT, SloConfig(), EVERY_RULE)


def family_names(names: list[str]) -> set[str]:
    return {name.split(":")[0] for name in names}


def every_row_name() -> list[str]:
    program = tick_program.build(
        problem(), EVERY_RULE, step_up=True, step_down=True, integral=True, elastic=True
    )
    return program.rows.names


def test_each_family_of_rows_is_built_by_the_function_of_that_name_which_documents_it() -> None:
    families = family_names(every_row_name()) | {"spot_available"}
    step_rows = {"step_up", "step_down"}
    assert families >= {"cover_now", "zone_loss", "pool_share", "quota", *step_rows, "non_spot_fraction"}
    for family in families - step_rows:
        builder = getattr(tick_program, family)
        assert inspect.isfunction(builder), family
        assert len(builder.__doc__ or "") > 40, family
    # Both step limits are one rule, documented together under the name of each.
    assert all(f"``{name}:<tier>``" in (tick_program.step_limits.__doc__ or "") for name in step_rows)


def test_a_family_function_adds_only_rows_of_its_own_name() -> None:
    tick = problem()
    cols = tick_program.Columns.of(len(tick.pools))
    for family in ("cover_now", "cover_next_hour", "non_spot_min", "quota", "launch"):
        rows = tick_program.Rows(cols.width)
        getattr(tick_program, family)(rows, tick, cols)
        assert rows.names
        assert family_names(rows.names) == {family}


def test_the_optimizer_docstring_names_every_family_it_can_report() -> None:
    doc = agent.core.optimizer.__doc__ or ""
    reportable = family_names(every_row_name()) - tick_program.BOOKKEEPING | {"spot_available"}
    for family in reportable:
        assert f"``{family}" in doc, family


def test_a_shortfall_column_per_coverage_family_and_the_fallback_names_what_is_short() -> None:
    cols = tick_program.Columns.of(3)
    assert [cols.shortfall(f) for f in tick_program.SHORTFALLS] == list(
        range(cols.shortfalls.start, cols.shortfalls.stop)
    )
    assert cols.width == cols.shortfalls.stop
    tight = Catalog(name="tight", types={"h100_8x": dataclasses.replace(H100, max_instances=1)})
    alloc = optimize_tick(tight, TickInput(Demand(30.0, 1500, 500), Demand(30.0, 1500, 500)))
    assert alloc.status == "fallback"
    assert "current P75 demand short by" in alloc.reason
    assert "(limited by quota:h100_8x)" in alloc.reason


def test_an_allocation_as_a_point_of_the_program_fills_launches_and_the_spot_total() -> None:
    tick = problem()
    cols = tick_program.Columns.of(len(tick.pools))
    x = cols.vector(tick, np.array([5.0, 1.0]), np.array([0.0, 4.0]))
    assert list(x[cols.launches("spot")]) == [2.0, 0.0]  # held 3 and 2
    assert list(x[cols.launches("ondemand")]) == [0.0, 1.0]  # held 0 and 3
    assert x[cols.spot_total] == 6.0
