"""Demand traces for replay and backtests, loaded from the real traces in the shared data directory.

A :class:`DemandTrace` is a sequence of :class:`DemandStep`: from ``time_s`` (UNIX seconds) for
``duration_s`` seconds, demand was ``demand`` (a rate and its mean token lengths). Steps are in time
order and do not overlap; gaps are allowed (no data there).

ServeGen (Alibaba Bailian, Apache-2.0): ``<model>_rate_10min.csv`` gives the total request rate per
10-minute window and ``<model>_tokens_6h.csv`` the token-length statistics per 6-hour window; each rate
window becomes one step whose token lengths are ``in_mean``/``out_mean`` of the 6-hour window holding it.
Window offsets count from midnight of day 1, placed at ``start_epoch`` (by default Monday 2024-01-01
00:00 UTC, so that day-of-week structure lands on a fixed, known weekday).

A file that cannot be used raises :class:`TraceError`, whose message is one line naming the file, the line
and the column.
"""

from __future__ import annotations

import bisect
import csv
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.core.demand import Demand

DATA_DIR_ENV: Final = "COST_AGENT_DATA_DIR"
DEFAULT_START_EPOCH: Final = 1704067200.0  # 2024-01-01T00:00:00Z, a Monday
SERVEGEN_RATE_WINDOW_S: Final = 600.0
SERVEGEN_TOKEN_WINDOW_S: Final = 21600.0

_SERVEGEN_SUBDIR: Final = Path("traces") / "servegen"
_RATE_SUFFIX: Final = "_rate_10min.csv"
_TOKENS_SUFFIX: Final = "_tokens_6h.csv"
_MODEL_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class TraceError(ValueError):
    """A trace that cannot be loaded; the message is one line naming the file, line and column."""


@dataclass(frozen=True, slots=True)
class DemandStep:
    """Demand held constant from ``time_s`` for ``duration_s`` seconds."""

    time_s: float
    duration_s: float
    demand: Demand

    def __post_init__(self) -> None:
        if not math.isfinite(self.time_s):
            raise ValueError(f"time_s must be finite, got {self.time_s!r}")
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ValueError(f"duration_s must be a finite number > 0, got {self.duration_s!r}")

    @property
    def end_s(self) -> float:
        return self.time_s + self.duration_s


@dataclass(frozen=True, slots=True)
class DemandTrace:
    """A named sequence of demand steps in time order, without overlaps."""

    name: str
    steps: tuple[DemandStep, ...]

    def __post_init__(self) -> None:
        for previous, step in zip(self.steps, self.steps[1:], strict=False):
            if step.time_s < previous.end_s:
                raise ValueError(
                    f"trace {self.name!r}: step at {step.time_s} starts before the previous one ends "
                    f"({previous.end_s})"
                )

    @property
    def start_s(self) -> float:
        return self.steps[0].time_s if self.steps else 0.0

    @property
    def end_s(self) -> float:
        return self.steps[-1].end_s if self.steps else 0.0

    @property
    def duration_s(self) -> float:
        """Seconds from the first step's start to the last step's end (gaps included)."""
        return self.end_s - self.start_s

    @property
    def peak_rps(self) -> float:
        return max((step.demand.rps for step in self.steps), default=0.0)


def find_data_dir() -> Path:
    """The shared ``data`` directory: ``$COST_AGENT_DATA_DIR``, else ``shared/data`` found upwards.

    The search walks up from the working directory and from this file (the project lives at
    ``<root>/main``, the data at ``<root>/shared/data``).
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise TraceError(f"{DATA_DIR_ENV}={env!r} is not a directory")
        return path
    origins = (Path.cwd().resolve(), Path(__file__).resolve().parent)
    for origin in origins:
        for parent in (origin, *origin.parents):
            candidate = parent / "shared" / "data"
            if (candidate / _SERVEGEN_SUBDIR).is_dir():
                return candidate
    raise TraceError(
        f"no shared/data/{_SERVEGEN_SUBDIR.as_posix()} above {origins[0]} or {origins[1]}; "
        f"set {DATA_DIR_ENV} to the data directory"
    )


def _servegen_dir(data_dir: Path | None) -> Path:
    base = find_data_dir() if data_dir is None else Path(data_dir)
    # Accept the data directory itself or, for convenience, the servegen directory directly.
    nested = base / _SERVEGEN_SUBDIR
    return nested if nested.is_dir() else base


def servegen_models(data_dir: Path | None = None) -> tuple[str, ...]:
    """The models with a rate file in the ServeGen directory, sorted."""
    directory = _servegen_dir(data_dir)
    return tuple(sorted(p.name.removesuffix(_RATE_SUFFIX) for p in directory.glob(f"*{_RATE_SUFFIX}")))


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    values: dict[str, float]


def _read_csv(path: Path, columns: Sequence[str]) -> list[_Row]:
    """The named columns of every data row, each a finite number ≥ 0, with its line number."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or not any(name.strip() for name in header):
                raise TraceError(f"{path}:1: empty file, expected a header with {', '.join(columns)}")
            names = [name.strip() for name in header]
            index: dict[str, int] = {}
            for column in columns:
                if column not in names:
                    raise TraceError(f"{path}:1: missing column {column!r} in header {','.join(names)}")
                index[column] = names.index(column)
            rows: list[_Row] = []
            for fields in reader:
                line = reader.line_num
                if not fields or all(not f.strip() for f in fields):
                    continue
                if len(fields) != len(names):
                    raise TraceError(f"{path}:{line}: expected {len(names)} fields, got {len(fields)}")
                values: dict[str, float] = {}
                for column, i in index.items():
                    raw = fields[i].strip()
                    try:
                        value = float(raw)
                    except ValueError:
                        raise TraceError(f"{path}:{line}: column {column!r}: not a number: {raw!r}") from None
                    if not (math.isfinite(value) and value >= 0):
                        raise TraceError(
                            f"{path}:{line}: column {column!r}: must be a finite number ≥ 0, got {raw!r}"
                        )
                    values[column] = value
                rows.append(_Row(line, values))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TraceError(f"{path}: cannot read: {exc}") from exc
    if not rows:
        raise TraceError(f"{path}:2: no data rows")
    return rows


def _check_windows(path: Path, rows: Sequence[_Row], width_s: float) -> None:
    previous: float | None = None
    for row in rows:
        start = row.values["window_start_s"]
        if previous is not None and start < previous + width_s:
            raise TraceError(
                f"{path}:{row.line}: column 'window_start_s': window {start:g} is out of order or "
                f"overlaps the previous one ({previous:g}, {width_s:g} s wide)"
            )
        previous = start


def load_servegen(
    model: str,
    data_dir: Path | None = None,
    start_epoch: float = DEFAULT_START_EPOCH,
    *,
    prompt_tokens: float | None = None,
    output_tokens: float | None = None,
) -> DemandTrace:
    """One ServeGen model's demand as 10-minute steps starting at ``start_epoch``.

    ``data_dir`` is the shared data directory (or the servegen directory itself); by default it is found
    by :func:`find_data_dir`. ``prompt_tokens``/``output_tokens`` are used for windows that no token
    file covers (e.g. deepseek-r1, which has a rate file only); without them such a window is an error.
    """
    if not _MODEL_NAME.match(model):
        raise TraceError(f"bad ServeGen model name {model!r}")
    if not math.isfinite(start_epoch):
        raise ValueError(f"start_epoch must be finite, got {start_epoch!r}")
    defaults: tuple[float, float] | None = None
    if prompt_tokens is not None or output_tokens is not None:
        if prompt_tokens is None or output_tokens is None:
            raise ValueError("give both prompt_tokens and output_tokens, or neither")
        for name, value in (("prompt_tokens", prompt_tokens), ("output_tokens", output_tokens)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}")
        defaults = (prompt_tokens, output_tokens)

    directory = _servegen_dir(data_dir)
    rate_path = directory / f"{model}{_RATE_SUFFIX}"
    tokens_path = directory / f"{model}{_TOKENS_SUFFIX}"
    if not rate_path.is_file():
        available = ", ".join(servegen_models(directory)) or "none"
        raise TraceError(f"{rate_path}: no such trace file (models available: {available})")
    rates = _read_csv(rate_path, ("window_start_s", "total_rate_rps"))
    _check_windows(rate_path, rates, SERVEGEN_RATE_WINDOW_S)

    token_starts: list[float] = []
    token_means: list[tuple[float, float]] = []
    if tokens_path.is_file():
        tokens = _read_csv(tokens_path, ("window_start_s", "in_mean", "out_mean"))
        _check_windows(tokens_path, tokens, SERVEGEN_TOKEN_WINDOW_S)
        token_starts = [row.values["window_start_s"] for row in tokens]
        token_means = [(row.values["in_mean"], row.values["out_mean"]) for row in tokens]
    elif defaults is None:
        raise TraceError(
            f"{tokens_path}: token file missing; pass prompt_tokens= and output_tokens= to load "
            f"{rate_path.name} with fixed token lengths"
        )

    steps: list[DemandStep] = []
    for row in rates:
        start = row.values["window_start_s"]
        i = bisect.bisect_right(token_starts, start) - 1
        if i >= 0 and start + SERVEGEN_RATE_WINDOW_S <= token_starts[i] + SERVEGEN_TOKEN_WINDOW_S:
            prompt, output = token_means[i]
        elif defaults is not None:
            prompt, output = defaults
        else:
            raise TraceError(
                f"{rate_path}:{row.line}: column 'window_start_s': no 6-hour window of {tokens_path.name} "
                f"holds the window at {start:g} s"
            )
        demand = Demand(row.values["total_rate_rps"], prompt, output)
        steps.append(DemandStep(start_epoch + start, SERVEGEN_RATE_WINDOW_S, demand))
    return DemandTrace(name=f"servegen/{model}", steps=tuple(steps))
