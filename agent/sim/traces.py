"""Demand traces for replay and backtests, loaded from the real traces in the shared data directory.

A :class:`DemandTrace` is a sequence of :class:`DemandStep`: from ``time_s`` (UNIX seconds) for
``duration_s`` seconds, demand was ``demand`` (a rate and its mean token lengths). Steps are in time
order and do not overlap; gaps are allowed (no data there).

ServeGen (Alibaba Bailian, Apache-2.0): ``<model>_rate_10min.csv`` gives the total request rate per
10-minute window and ``<model>_tokens_6h.csv`` the token-length statistics per 6-hour window; each rate
window becomes one step whose token lengths are ``in_mean``/``out_mean`` of the 6-hour window holding it.
Window offsets count from midnight of day 1, placed at ``start_epoch`` (by default Monday 2024-01-01
00:00 UTC, so that day-of-week structure lands on a fixed, known weekday).

Other sources, all reached through :func:`load_demand` and a spec string (see :data:`DEMAND_SPECS`):

- ``azure2023:code`` / ``azure2023:conv`` (Azure LLM inference 2023, CC-BY 4.0) and ``mooncake`` (Kimi,
  Apache-2.0) list one row per request; they are aggregated into fixed steps of ``step_s`` seconds from the
  first request: rate = requests in the step ÷ ``step_s``, token lengths the request-weighted means, and a
  step without requests is a zero-rate step carrying the trace's overall mean token mix. The Azure wall
  clock (``2023-11-16 18:17:03.9799600``, 7-digit fraction, taken as UTC) is parsed here, exactly.
- ``burstgpt`` (aggregates of BurstGPT_1, CC-BY 4.0): week 1 as tokens/s per minute, 7 × 1440 one-minute
  steps; minutes the file leaves out had no traffic and become zero-rate steps. Tokens/s become requests/s
  through the mean tokens per request of days 0-6 of the daily file (total_tokens ÷ requests, about 872).
  The aggregates do not split tokens into prompt and output, so the mean is split by
  :data:`BURSTGPT_PROMPT_SHARE` (the prompt share of all tokens in the Azure 2023 conversation trace, the
  nearest published Azure chat-service mix), or in the ratio ``prompt_tokens : output_tokens`` when given.
- ``csv:PATH``: ``time_s,rps[,prompt_tokens,output_tokens]``, ``time_s`` in seconds from the trace start;
  each row holds until the next row (the last one for the gap before it).

Every step of every source is placed from ``start_epoch`` (default :data:`DEFAULT_START_EPOCH`).
:func:`resample`, :func:`scale_trace` and :func:`peak_nodes_factor` prepare a loaded trace for a backtest.

A file that cannot be used raises :class:`TraceError`, whose message is one line naming the file, the line
and the column.
"""

from __future__ import annotations

import bisect
import calendar
import csv
import itertools
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.core.capacity import SloConfig, rps_per_instance
from agent.core.catalog import InstanceType
from agent.core.demand import Demand

DATA_DIR_ENV: Final = "COST_AGENT_DATA_DIR"
DEFAULT_START_EPOCH: Final = 1704067200.0  # 2024-01-01T00:00:00Z, a Monday
SERVEGEN_RATE_WINDOW_S: Final = 600.0
SERVEGEN_TOKEN_WINDOW_S: Final = 21600.0

_SERVEGEN_SUBDIR: Final = Path("traces") / "servegen"
_RATE_SUFFIX: Final = "_rate_10min.csv"
_TOKENS_SUFFIX: Final = "_tokens_6h.csv"
_MODEL_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

DEFAULT_STEP_S: Final = 60.0
BURSTGPT_WEEK_MINUTES: Final = 7 * 1440
# Prompt share of all tokens in traces/azure-llm-2023/conv.csv: 22,361,870 context tokens of 26,450,535
# (context + generated). BurstGPT's aggregates give total tokens only; this is the stand-in split.
BURSTGPT_PROMPT_SHARE: Final = 0.8454
DEMAND_SPECS: Final = (
    "servegen:<model>",
    "azure2023:code",
    "azure2023:conv",
    "mooncake",
    "burstgpt",
    "csv:PATH",
)

_AZURE_SUBDIR: Final = Path("traces") / "azure-llm-2023"
_AZURE_KINDS: Final = ("code", "conv")
_AZURE_COLUMNS: Final = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_AZURE_TIME: Final = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?$")
_MOONCAKE_FILE: Final = Path("traces") / "mooncake" / "conversation_trace.jsonl"
_MOONCAKE_FIELDS: Final = ("timestamp", "input_length", "output_length")
_BURSTGPT_SUBDIR: Final = Path("traces") / "burstgpt"
_BURSTGPT_MINUTES_FILE: Final = "burstgpt1_week1_tokens_per_second_by_minute.csv"
_BURSTGPT_DAILY_FILE: Final = "burstgpt1_daily_requests_tokens_61d.csv"
_CSV_COLUMNS: Final = ("time_s", "rps")
_CSV_TOKEN_COLUMNS: Final = ("prompt_tokens", "output_tokens")


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


@dataclass(frozen=True, slots=True)
class _RawRow:
    line: int
    fields: dict[str, str]


def _read_raw_csv(path: Path, columns: Sequence[str], optional: Sequence[str] = ()) -> list[_RawRow]:
    """The named columns (and those of ``optional`` the header has) of every data row, as stripped text."""
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
            for column in optional:
                if column in names:
                    index[column] = names.index(column)
            rows: list[_RawRow] = []
            for fields in reader:
                line = reader.line_num
                if not fields or all(not f.strip() for f in fields):
                    continue
                if len(fields) != len(names):
                    raise TraceError(f"{path}:{line}: expected {len(names)} fields, got {len(fields)}")
                rows.append(_RawRow(line, {column: fields[i].strip() for column, i in index.items()}))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TraceError(f"{path}: cannot read: {exc}") from exc
    if not rows:
        raise TraceError(f"{path}:2: no data rows")
    return rows


def _number(path: Path, line: int, column: str, raw: str) -> float:
    """``raw`` as a finite number ≥ 0, or a :class:`TraceError` naming file, line and column."""
    try:
        value = float(raw)
    except ValueError:
        raise TraceError(f"{path}:{line}: column {column!r}: not a number: {raw!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise TraceError(f"{path}:{line}: column {column!r}: must be a finite number ≥ 0, got {raw!r}")
    return value


def _read_csv(path: Path, columns: Sequence[str], optional: Sequence[str] = ()) -> list[_Row]:
    """The named columns of every data row, each a finite number ≥ 0, with its line number."""
    return [
        _Row(raw.line, {column: _number(path, raw.line, column, text) for column, text in raw.fields.items()})
        for raw in _read_raw_csv(path, columns, optional)
    ]


def _check_token_value(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}")


def _token_pair(prompt_tokens: float | None, output_tokens: float | None) -> tuple[float, float] | None:
    """Both token lengths (validated), or None when neither is given."""
    if prompt_tokens is None and output_tokens is None:
        return None
    if prompt_tokens is None or output_tokens is None:
        raise ValueError("give both prompt_tokens and output_tokens, or neither")
    _check_token_value("prompt_tokens", prompt_tokens)
    _check_token_value("output_tokens", output_tokens)
    return (prompt_tokens, output_tokens)


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
    defaults = _token_pair(prompt_tokens, output_tokens)

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


# -- per-request traces ---------------------------------------------------------------------------------


def _data_root(data_dir: Path | None) -> Path:
    return find_data_dir() if data_dir is None else Path(data_dir)


def _check_step(step_s: float) -> None:
    if not (math.isfinite(step_s) and step_s > 0):
        raise ValueError(f"step_s must be a finite number > 0, got {step_s!r}")


def _check_epoch(start_epoch: float) -> None:
    if not math.isfinite(start_epoch):
        raise ValueError(f"start_epoch must be finite, got {start_epoch!r}")


def _aggregate(
    name: str,
    offsets: Sequence[float],
    prompts: Sequence[float],
    outputs: Sequence[float],
    step_s: float,
    start_epoch: float,
) -> DemandTrace:
    """Requests at ``offsets`` (seconds, any origin) as fixed steps from the first request.

    A step's rate is its request count ÷ ``step_s`` and its token lengths are the means over its requests;
    a step without requests has rate 0 and the whole trace's mean token mix.
    """
    first = min(offsets)
    count = int((max(offsets) - first) // step_s) + 1
    requests = [0] * count
    prompt_sums = [0.0] * count
    output_sums = [0.0] * count
    for offset, prompt, output in zip(offsets, prompts, outputs, strict=True):
        i = int((offset - first) // step_s)
        requests[i] += 1
        prompt_sums[i] += prompt
        output_sums[i] += output
    mean_prompt = math.fsum(prompts) / len(prompts)
    mean_output = math.fsum(outputs) / len(outputs)
    steps: list[DemandStep] = []
    for i, n in enumerate(requests):
        if n:
            demand = Demand(n / step_s, prompt_sums[i] / n, output_sums[i] / n)
        else:
            demand = Demand(0.0, mean_prompt, mean_output)
        steps.append(DemandStep(start_epoch + i * step_s, step_s, demand))
    return DemandTrace(name=name, steps=tuple(steps))


def _parse_wall_clock(path: Path, line: int, column: str, raw: str) -> tuple[int, float]:
    """``YYYY-MM-DD HH:MM:SS[.fraction]`` read as UTC: (whole UNIX seconds, fraction of a second).

    The fraction may have up to 9 digits (the Azure traces have 7, which ``datetime`` does not parse);
    keeping it apart from the whole seconds keeps differences exact to the digit.
    """
    match = _AZURE_TIME.match(raw)
    if match is None:
        raise TraceError(
            f"{path}:{line}: column {column!r}: expected YYYY-MM-DD HH:MM:SS[.fraction], got {raw!r}"
        )
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
        raise TraceError(f"{path}:{line}: column {column!r}: no such date: {raw!r}")
    if hour > 23 or minute > 59 or second > 59:
        raise TraceError(f"{path}:{line}: column {column!r}: no such time of day: {raw!r}")
    whole = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    digits = match.group(7) or "0"
    return whole, int(digits) / 10 ** len(digits)


def load_azure2023(
    kind: str,
    data_dir: Path | None = None,
    start_epoch: float = DEFAULT_START_EPOCH,
    *,
    step_s: float = DEFAULT_STEP_S,
) -> DemandTrace:
    """The Azure 2023 ``code`` or ``conv`` trace (one row per request) as fixed steps of ``step_s``."""
    if kind not in _AZURE_KINDS:
        raise TraceError(f"unknown Azure 2023 trace {kind!r}; expected one of {', '.join(_AZURE_KINDS)}")
    _check_step(step_s)
    _check_epoch(start_epoch)
    path = _data_root(data_dir) / _AZURE_SUBDIR / f"{kind}.csv"
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    times: list[tuple[int, float]] = []
    prompts: list[float] = []
    outputs: list[float] = []
    for row in _read_raw_csv(path, _AZURE_COLUMNS):
        times.append(_parse_wall_clock(path, row.line, "TIMESTAMP", row.fields["TIMESTAMP"]))
        prompts.append(_number(path, row.line, "ContextTokens", row.fields["ContextTokens"]))
        outputs.append(_number(path, row.line, "GeneratedTokens", row.fields["GeneratedTokens"]))
    first_whole, first_fraction = min(times)
    offsets = [(whole - first_whole) + (fraction - first_fraction) for whole, fraction in times]
    return _aggregate(f"azure2023/{kind}", offsets, prompts, outputs, step_s, start_epoch)


def _json_number(path: Path, line: int, record: dict[str, object], field: str) -> float:
    if field not in record:
        raise TraceError(f"{path}:{line}: column {field!r}: missing")
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TraceError(f"{path}:{line}: column {field!r}: not a number: {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise TraceError(f"{path}:{line}: column {field!r}: must be a finite number ≥ 0, got {value!r}")
    return float(value)


def load_mooncake(
    data_dir: Path | None = None,
    start_epoch: float = DEFAULT_START_EPOCH,
    *,
    step_s: float = DEFAULT_STEP_S,
    path: Path | None = None,
) -> DemandTrace:
    """The Mooncake conversation trace (JSON lines, ``timestamp`` in ms) as fixed steps of ``step_s``.

    ``path`` reads another file of the same form instead of the shared one.
    """
    _check_step(step_s)
    _check_epoch(start_epoch)
    path = _data_root(data_dir) / _MOONCAKE_FILE if path is None else Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    offsets: list[float] = []
    prompts: list[float] = []
    outputs: list[float] = []
    try:
        with path.open(encoding="utf-8") as handle:
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise TraceError(f"{path}:{line}: not JSON: {exc.msg} (column {exc.colno})") from None
                if not isinstance(record, dict):
                    raise TraceError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
                timestamp, prompt, output = (_json_number(path, line, record, f) for f in _MOONCAKE_FIELDS)
                offsets.append(timestamp / 1000.0)
                prompts.append(prompt)
                outputs.append(output)
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read: {exc}") from exc
    if not offsets:
        raise TraceError(f"{path}:1: no requests")
    return _aggregate("mooncake", offsets, prompts, outputs, step_s, start_epoch)


# -- BurstGPT ---------------------------------------------------------------------------------------------


def burstgpt_tokens_per_request(data_dir: Path | None = None) -> float:
    """Mean tokens per request over days 0-6 of BurstGPT_1 (total_tokens ÷ requests of the daily file)."""
    path = _data_root(data_dir) / _BURSTGPT_SUBDIR / _BURSTGPT_DAILY_FILE
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    rows = _read_csv(path, ("day", "requests", "total_tokens"))
    week = rows[:7]
    for expected, row in enumerate(week):
        if row.values["day"] != expected:
            raise TraceError(
                f"{path}:{row.line}: column 'day': expected day {expected} (days 0-6 in order), "
                f"got {row.values['day']:g}"
            )
    if len(week) < 7:
        raise TraceError(
            f"{path}:{rows[-1].line + 1}: column 'day': days 0-6 needed, the file ends at day "
            f"{rows[-1].values['day']:g}"
        )
    requests = sum(row.values["requests"] for row in week)
    if requests <= 0:
        raise TraceError(f"{path}:{week[-1].line}: column 'requests': no requests in days 0-6")
    return sum(row.values["total_tokens"] for row in week) / requests


def load_burstgpt(
    data_dir: Path | None = None,
    start_epoch: float = DEFAULT_START_EPOCH,
    *,
    prompt_tokens: float | None = None,
    output_tokens: float | None = None,
) -> DemandTrace:
    """BurstGPT_1 week 1 as 7 × 1440 one-minute steps (a minute missing from the file has zero traffic).

    Rate = tokens/s ÷ :func:`burstgpt_tokens_per_request`. That mean is split into prompt and output
    tokens by :data:`BURSTGPT_PROMPT_SHARE`, or in the ratio ``prompt_tokens : output_tokens`` when given
    (only their ratio is used, so that the trace keeps its measured tokens/s).
    """
    _check_epoch(start_epoch)
    share = BURSTGPT_PROMPT_SHARE
    pair = _token_pair(prompt_tokens, output_tokens)
    if pair is not None:
        if sum(pair) <= 0:
            raise ValueError("prompt_tokens + output_tokens must be > 0 to split BurstGPT's tokens")
        share = pair[0] / sum(pair)
    per_request = burstgpt_tokens_per_request(data_dir)
    path = _data_root(data_dir) / _BURSTGPT_SUBDIR / _BURSTGPT_MINUTES_FILE
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    tokens_per_s = [0.0] * BURSTGPT_WEEK_MINUTES
    previous = -1
    for row in _read_csv(path, ("minute", "tokens_per_second")):
        value = row.values["minute"]
        minute = int(value)
        if minute != value or minute >= BURSTGPT_WEEK_MINUTES:
            raise TraceError(
                f"{path}:{row.line}: column 'minute': expected a whole minute of week 1 "
                f"(0-{BURSTGPT_WEEK_MINUTES - 1}), got {value:g}"
            )
        if minute <= previous:
            raise TraceError(
                f"{path}:{row.line}: column 'minute': minute {minute} is out of order or repeated "
                f"(after {previous})"
            )
        previous = minute
        tokens_per_s[minute] = row.values["tokens_per_second"]
    prompt = per_request * share
    output = per_request - prompt
    steps = tuple(
        DemandStep(start_epoch + 60.0 * minute, 60.0, Demand(tps / per_request, prompt, output))
        for minute, tps in enumerate(tokens_per_s)
    )
    return DemandTrace(name="burstgpt/week1", steps=steps)


# -- generic CSV ----------------------------------------------------------------------------------------


def load_csv_trace(
    path: Path,
    start_epoch: float = DEFAULT_START_EPOCH,
    *,
    prompt_tokens: float | None = None,
    output_tokens: float | None = None,
    step_s: float = DEFAULT_STEP_S,
) -> DemandTrace:
    """A CSV with ``time_s,rps[,prompt_tokens,output_tokens]``; ``time_s`` counts from the trace start.

    Rows must be in strictly increasing time; each holds until the next one, the last for as long as the
    gap before it (``step_s`` when the file has one row). A token column the file lacks takes the argument
    of the same name; without it, the file is an error naming the missing columns.
    """
    _check_step(step_s)
    _check_epoch(start_epoch)
    _check_token_value("prompt_tokens", prompt_tokens)
    _check_token_value("output_tokens", output_tokens)
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    rows = _read_csv(path, _CSV_COLUMNS, _CSV_TOKEN_COLUMNS)
    given = {"prompt_tokens": prompt_tokens, "output_tokens": output_tokens}
    fill = {c: value for c, value in given.items() if value is not None}
    missing = [c for c in _CSV_TOKEN_COLUMNS if c not in rows[0].values and c not in fill]
    if missing:
        names = " and ".join(repr(c) for c in missing)
        raise TraceError(
            f"{path}:1: missing column {names}; add {'them' if len(missing) > 1 else 'it'} or pass "
            f"{' and '.join(f'{c}=' for c in missing)} (--prompt-tokens/--output-tokens)"
        )
    for previous, row in itertools.pairwise(rows):
        if row.values["time_s"] <= previous.values["time_s"]:
            raise TraceError(
                f"{path}:{row.line}: column 'time_s': {row.values['time_s']:g} is not after the previous "
                f"row's {previous.values['time_s']:g}"
            )
    steps: list[DemandStep] = []
    for i, row in enumerate(rows):
        time_s = row.values["time_s"]
        if i + 1 < len(rows):
            duration = rows[i + 1].values["time_s"] - time_s
        elif i > 0:
            duration = time_s - rows[i - 1].values["time_s"]
        else:
            duration = step_s
        prompt, output = (row.values[c] if c in row.values else fill[c] for c in _CSV_TOKEN_COLUMNS)
        steps.append(DemandStep(start_epoch + time_s, duration, Demand(row.values["rps"], prompt, output)))
    return DemandTrace(name=f"csv/{path.name}", steps=tuple(steps))


# -- one entry point ------------------------------------------------------------------------------------


def load_demand(
    spec: str,
    *,
    step_s: float = DEFAULT_STEP_S,
    prompt_tokens: float | None = None,
    output_tokens: float | None = None,
    data_dir: Path | None = None,
    start_epoch: float = DEFAULT_START_EPOCH,
) -> DemandTrace:
    """The demand trace a spec names (one of :data:`DEMAND_SPECS`).

    ``step_s`` is the step per-request traces (Azure, Mooncake) are aggregated into; the others keep
    their own steps (ServeGen 10 minutes, BurstGPT 1 minute, CSV its rows): :func:`resample` them.
    ``prompt_tokens``/``output_tokens`` fill token lengths a source lacks (ServeGen windows without token
    statistics, CSV token columns) and set BurstGPT's prompt/output split; per-request traces ignore them.
    """
    kind, _, argument = spec.partition(":")
    if kind == "servegen" and argument:
        return load_servegen(
            argument, data_dir, start_epoch, prompt_tokens=prompt_tokens, output_tokens=output_tokens
        )
    if kind == "azure2023" and argument in _AZURE_KINDS:
        return load_azure2023(argument, data_dir, start_epoch, step_s=step_s)
    if spec == "mooncake":
        return load_mooncake(data_dir, start_epoch, step_s=step_s)
    if spec == "burstgpt":
        return load_burstgpt(data_dir, start_epoch, prompt_tokens=prompt_tokens, output_tokens=output_tokens)
    if kind == "csv" and argument:
        return load_csv_trace(
            Path(argument).expanduser(),
            start_epoch,
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            step_s=step_s,
        )
    raise TraceError(f"unknown demand trace {spec!r}; expected one of {', '.join(DEMAND_SPECS)}")


# -- transformations ------------------------------------------------------------------------------------


def scale_trace(trace: DemandTrace, factor: float) -> DemandTrace:
    """The same trace with every rate multiplied by ``factor`` (token mixes unchanged)."""
    if not (math.isfinite(factor) and factor >= 0):
        raise ValueError(f"factor must be a finite number ≥ 0, got {factor!r}")
    steps = tuple(DemandStep(s.time_s, s.duration_s, s.demand.scaled(factor)) for s in trace.steps)
    return DemandTrace(name=trace.name, steps=steps)


def _nodes_needed(itype: InstanceType, demand: Demand, slo: SloConfig) -> float:
    """Fractional nodes of ``itype`` that ``demand`` needs at the SLO (before rounding up)."""
    if demand.rps == 0:
        return 0.0
    return demand.rps / rps_per_instance(itype, demand.prompt_tokens, demand.output_tokens, slo)


def peak_nodes_factor(trace: DemandTrace, itype: InstanceType, slo: SloConfig, nodes: int) -> float:
    """The rate factor after which the busiest step needs exactly ``nodes`` nodes of ``itype``.

    The busiest step is the one needing the most nodes for its own rate and token mix (not necessarily
    the one with the highest rate); scaled by the factor, it needs ``nodes`` to the last float bit or so,
    which :func:`agent.core.capacity.instances_needed` rounds to exactly ``nodes``.
    """
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"nodes must be an integer ≥ 1, got {nodes!r}")
    peak = max((_nodes_needed(itype, s.demand, slo) for s in trace.steps), default=0.0)
    if not (math.isfinite(peak) and peak > 0):
        raise ValueError(f"trace {trace.name!r} has no demand to scale (peak need {peak!r} nodes)")
    return nodes / peak


def resample(trace: DemandTrace, step_s: float) -> DemandTrace:
    """The trace on a grid of ``step_s`` seconds from its start, finer or coarser than its own steps.

    A new step's rate is the requests of the old steps overlapping it ÷ ``step_s`` (a time-weighted mean;
    a step finer than the old one simply repeats its rate), its token lengths are request-weighted means
    (time-weighted where the rate is zero). Time the old trace has no step for counts as no traffic, and a
    new step that no old step overlaps is left out, so gaps stay gaps. Total requests are conserved; the
    last step may reach past the old end (its rate averaged over the whole ``step_s``).
    """
    _check_step(step_s)
    start = trace.start_s
    # Per grid cell: requests, request-weighted prompt and output sums, covered seconds, time-weighted sums.
    cells: dict[int, list[float]] = {}
    tolerance = 1e-9 * step_s
    for step in trace.steps:
        k = int((step.time_s - start) // step_s)
        while True:
            cell_start = start + k * step_s
            if cell_start >= step.end_s - tolerance:
                break
            overlap = min(step.end_s, cell_start + step_s) - max(step.time_s, cell_start)
            if overlap > tolerance:
                cell = cells.setdefault(k, [0.0] * 6)
                requests = step.demand.rps * overlap
                cell[0] += requests
                cell[1] += requests * step.demand.prompt_tokens
                cell[2] += requests * step.demand.output_tokens
                cell[3] += overlap
                cell[4] += overlap * step.demand.prompt_tokens
                cell[5] += overlap * step.demand.output_tokens
            k += 1
    steps: list[DemandStep] = []
    for k in sorted(cells):
        requests, prompt_w, output_w, covered, prompt_t, output_t = cells[k]
        if requests > 0:
            demand = Demand(requests / step_s, prompt_w / requests, output_w / requests)
        else:
            demand = Demand(0.0, prompt_t / covered, output_t / covered)
        steps.append(DemandStep(start + k * step_s, step_s, demand))
    return DemandTrace(name=trace.name, steps=tuple(steps))
