"""One place that calls HiGHS's MILP solver (through ``scipy.optimize.milp``) with our options."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, OptimizeResult, milp


def solve_milp(
    c: np.ndarray,
    constraints: LinearConstraint | None,
    integrality: np.ndarray,
    bounds: Bounds,
    *,
    gap: float,
    time_limit_s: float | None = None,
) -> OptimizeResult:
    options: dict[str, object] = {"mip_rel_gap": gap}
    if time_limit_s is not None:
        options["time_limit"] = time_limit_s
    # Our programs are small: HiGHS's feasibility-jump start-up heuristic took most of the solve time
    # (bench/optimizer.py) and found nothing branch-and-bound does not find at once. scipy passes the
    # option on to HiGHS but warns that it does not know it.
    options["mip_heuristic_run_feasibility_jump"] = False
    with warnings.catch_warnings(), _native_stdout_silenced():
        warnings.filterwarnings("ignore", message="Unrecognized options", category=RuntimeWarning)
        return milp(c, constraints=constraints, integrality=integrality, bounds=bounds, options=options)


@contextlib.contextmanager
def _native_stdout_silenced() -> Iterator[None]:
    """HiGHS's C++ core sometimes prints a debug line to the process's stdout, where our JSON goes."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # e.g. pytest's capture: nothing native to guard
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
