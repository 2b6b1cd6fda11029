"""Spot availability traces: how many spot nodes a pool would let one hold, tick by tick.

Each file under the shared ``spot/`` directory is ``{"metadata": {"gap_seconds": N}, "data": [n0, n1, ...]}``:
``n_i`` spot instances could be held (availability traces) or were still running (preemption traces) from
``i × N`` to ``(i + 1) × N`` seconds after the trace's start, in one zone. One file is one pool, named after
the file's stem (``us-east-2b_v100_1``).

Sources (see the data README): ``skypilot:<subdir>`` reads every ``*.json`` in ``spot/skypilot/<subdir>``
(skypilot-org/spot-traces, the traces of "Can't Be Late", NSDI'24), ``spothedge-gcp`` every file in
``spot/spothedge-gcp-a100x8`` (MaoZiming/spothedge_ae, SkyServe/SpotHedge, EuroSys'25), ``file:PATH`` one
file. The traces were measured on V100/K80/A100 nodes: they stand in for the availability of whatever
node type a catalog's spot pools hold.

A trace is shorter than a long backtest (the AWS 16-node traces last 11-16 days, the GCP ones 1.3 days),
so :meth:`SpotTrace.available_at` wraps around: past the end, the trace starts again from its first tick.
Pools of unequal length wrap at different times, so their relative phase shifts after the first wrap.

Pure: no asyncio, NATS or logging. A file that cannot be used raises
:class:`~agent.sim.traces.TraceError` with one line naming the file and what is wrong in it.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.sim.traces import TraceError, find_data_dir

SPOT_SPECS: Final = ("skypilot:<subdir>", "spothedge-gcp", "file:PATH")

_SPOT_SUBDIR: Final = Path("spot")
_SKYPILOT_SUBDIR: Final = _SPOT_SUBDIR / "skypilot"
_SPOTHEDGE_SUBDIR: Final = _SPOT_SUBDIR / "spothedge-gcp-a100x8"


@dataclass(frozen=True, slots=True)
class SpotTrace:
    """Spot nodes a pool allows, ``counts[i]`` from ``i × gap_s`` to ``(i + 1) × gap_s`` seconds."""

    pool: str
    gap_s: float
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gap_s) and self.gap_s > 0):
            raise ValueError(
                f"spot trace {self.pool!r}: gap_s must be a finite number > 0, got {self.gap_s!r}"
            )
        if not self.counts:
            raise ValueError(f"spot trace {self.pool!r}: no counts")
        for i, count in enumerate(self.counts):
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(
                    f"spot trace {self.pool!r}: counts[{i}] must be an integer ≥ 0, got {count!r}"
                )

    @property
    def duration_s(self) -> float:
        """Seconds the trace covers before it wraps around."""
        return self.gap_s * len(self.counts)

    @property
    def peak(self) -> int:
        return max(self.counts)

    def available_at(self, t_offset_s: float) -> int:
        """Spot nodes the pool allows ``t_offset_s`` seconds after the trace's start.

        The count of the tick holding the offset (a tick includes its start, not its end). Past
        :attr:`duration_s` the trace repeats cyclically, so that a 7-day trace can drive a 14-day backtest.
        """
        if not (math.isfinite(t_offset_s) and t_offset_s >= 0):
            raise ValueError(f"t_offset_s must be a finite number ≥ 0, got {t_offset_s!r}")
        return self.counts[int(t_offset_s // self.gap_s) % len(self.counts)]


def observed_reclaim_rate(trace: SpotTrace) -> float:
    """Capacity lost per held node-hour: the sum of drops ÷ the sum of count × hours, per hour.

    Each fall of the count from one tick to the next reclaims that many held nodes; the exposure is the
    count held over each tick that has a successor (the wrap-around is not counted). A data-driven
    stand-in for a catalog's ``spot_reclaim_per_hour``; unlike that figure it can exceed 1 (several
    reclaims per node-hour in a pool that flaps). A pool that never had capacity gives 0.0.
    """
    counts = trace.counts
    drops = sum(max(0, before - after) for before, after in itertools.pairwise(counts))
    node_hours = sum(counts[:-1]) * trace.gap_s / 3600.0
    return drops / node_hours if node_hours > 0 else 0.0


def _check_scale(scale: float) -> None:
    if not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"scale must be a finite number ≥ 0, got {scale!r}")


def _scaled(count: int, scale: float) -> int:
    return max(0, math.floor(count * scale + 0.5))


def load_spot_file(path: Path, *, scale: float = 1.0, pool: str | None = None) -> SpotTrace:
    """One spot trace file; the pool is named ``pool``, by default after the file's stem.

    ``scale`` multiplies every count (rounded half up, never below 0): on a 0/1 trace a scale of 8 means
    "8 nodes available whenever the trace says 1".
    """
    _check_scale(scale)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read: {exc}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{path}:{exc.lineno}: not JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(document, dict):
        raise TraceError(f"{path}: expected a JSON object with 'metadata' and 'data'")
    metadata = document.get("metadata")
    if not isinstance(metadata, dict) or "gap_seconds" not in metadata:
        raise TraceError(f"{path}: missing metadata.gap_seconds")
    gap = metadata["gap_seconds"]
    if isinstance(gap, bool) or not isinstance(gap, int | float) or not (math.isfinite(gap) and gap > 0):
        raise TraceError(f"{path}: metadata.gap_seconds must be a number > 0, got {gap!r}")
    data = document.get("data")
    if not isinstance(data, list):
        raise TraceError(f"{path}: missing 'data', a list of counts")
    if not data:
        raise TraceError(f"{path}: 'data' is empty")
    counts: list[int] = []
    for i, value in enumerate(data):
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral or value < 0:
            raise TraceError(f"{path}: data[{i}]: count must be an integer ≥ 0, got {value!r}")
        counts.append(_scaled(int(value), scale))
    return SpotTrace(pool=path.stem if pool is None else pool, gap_s=float(gap), counts=tuple(counts))


def _load_directory(directory: Path, scale: float) -> list[SpotTrace]:
    if not directory.is_dir():
        raise TraceError(f"{directory}: no such spot trace directory")
    files = sorted(p for p in directory.glob("*.json") if p.is_file())
    if not files:
        raise TraceError(f"{directory}: no *.json spot trace files")
    return [load_spot_file(path, scale=scale) for path in files]


def load_spot_traces(spec: str, *, data_dir: Path | None = None, scale: float = 1.0) -> list[SpotTrace]:
    """The spot traces a spec names (one of :data:`SPOT_SPECS`), one per pool, sorted by file name.

    ``data_dir`` is the shared data directory (found by :func:`~agent.sim.traces.find_data_dir` when not
    given); ``skypilot:<subdir>`` must stay inside ``spot/skypilot``. ``scale`` multiplies the counts (see
    :func:`load_spot_file`).
    """
    _check_scale(scale)
    kind, _, argument = spec.partition(":")
    if kind == "file" and argument:
        return [load_spot_file(Path(argument).expanduser(), scale=scale)]
    if kind == "skypilot" and argument:
        base = (find_data_dir() if data_dir is None else Path(data_dir)) / _SKYPILOT_SUBDIR
        directory = base / argument
        if Path(argument).is_absolute() or not directory.resolve().is_relative_to(base.resolve()):
            raise TraceError(f"spot trace {spec!r}: the directory must lie inside {base}")
        return _load_directory(directory, scale)
    if spec == "spothedge-gcp":
        base = find_data_dir() if data_dir is None else Path(data_dir)
        return _load_directory(base / _SPOTHEDGE_SUBDIR, scale)
    raise TraceError(f"unknown spot trace {spec!r}; expected one of {', '.join(SPOT_SPECS)}")
