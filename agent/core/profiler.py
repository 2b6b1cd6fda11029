"""Demand profile: day-of-week × time-of-day percentiles of request rate and token mix.

Contract:

- ``record(t, rps, prompt_tokens, output_tokens)`` takes one observation at UNIX time ``t``. Time is cut
  into bins of ``bin_minutes`` of *local* time in the configured IANA zone (DST-aware; never the
  machine's zone). All observations that fall into the same absolute bin (same local date, same bin) are
  merged into one sample: the mean rate, and the request-weighted mean token lengths. A sample is thus
  "the rate during that bin on that date", whatever the reporting interval. Records may arrive out of
  order; NaN, infinite or negative values raise ValueError naming the field.
- History is bounded: only samples whose bin lies within ``history_days`` days of the newest recorded
  bin are kept, so memory is O(history_days × bins per day) however many records arrive.
- ``predict(t)`` returns P50/P75/P95 of the rate from the samples of ``t``'s cell: the same day of the
  week and the bins within ±``neighbour_bins`` of ``t``'s bin (wrapping across midnight into the adjacent
  day), over every week of history. An empty cell widens to the same time of day on every day of the
  week (``source="nearby"``), then to the whole history (``source="global"``). With no history at all it
  raises :class:`ProfilerEmptyError`; it never invents a default. The token mix is the request-weighted
  mean of the samples used; ``tps_p*`` are percentiles of each sample's tokens per second.
- Residual spread (``residual_spread=True``, the default): a cell holds one sample per week and bin, so
  with a few weeks of history its P75/P95 are those of a handful of values and miss the variation from
  one occasion to the next (a growing week, a busy day). The profiler therefore also measures, on its
  own history, how far each sample lay from the forecast the rest of the history gives for it (its cell
  without its own occasion, i.e. without the bins within ±``neighbour_bins`` of it on its own date; the
  nearby cells if that is empty), as a ratio. When at least ``_MIN_RESIDUALS`` such ratios exist, P75
  and P95 (of rps and of tokens/s) are raised to at least P50 × the ratio's own P75/P50 and P95/P50.
  They are never lowered, so the band only widens where the cell's own samples understate the spread.
  The ratios are refitted lazily, by vectorised O(history) work, on the first ``predict`` after the
  history changed; otherwise ``predict`` is O(samples in the cell).
- ``to_bytes``/``from_bytes`` round-trip the configuration and the samples exactly (msgpack, versioned);
  the forecasts of the restored profiler are identical. ``restore`` loads saved samples into this
  profiler (which other readers share), if they were binned the same way.

Pure and synchronous: no asyncio, nats or logging here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import numpy as np
import numpy.typing as npt

from agent.core.demand import Demand, DemandForecast, ForecastSource

_MINUTES_PER_DAY: Final = 1440
_DAYS_PER_WEEK: Final = 7
_STATE_VERSION: Final = 1
_PERCENTILES: Final = (50.0, 75.0, 95.0)
# Below this many residuals a P95 is little more than their maximum: no spread is learned.
_MIN_RESIDUALS: Final = 20

FloatArray = npt.NDArray[np.float64]


class ProfilerEmptyError(LookupError):
    """The profiler has no history to forecast from."""


class _Sample:
    """One absolute bin: the observations merged into it."""

    __slots__ = ("count", "output_weighted", "prompt_weighted", "rps_sum")

    def __init__(self) -> None:
        self.count = 0
        self.rps_sum = 0.0
        # Token sums weighted by each observation's rate: with equal intervals, rate ∝ requests.
        self.prompt_weighted = 0.0
        self.output_weighted = 0.0

    @property
    def rps(self) -> float:
        return self.rps_sum / self.count

    @property
    def tokens_per_s(self) -> float:
        if self.rps_sum <= 0:
            return 0.0
        return self.rps * (self.prompt_weighted + self.output_weighted) / self.rps_sum


_NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class _SampleState(msgspec.Struct, array_like=True, frozen=True):
    key: int
    count: Annotated[int, msgspec.Meta(ge=1)]
    rps_sum: _NonNegative
    prompt_weighted: _NonNegative
    output_weighted: _NonNegative


class _State(msgspec.Struct, frozen=True):
    version: int
    bin_minutes: int
    history_days: int
    timezone: str
    neighbour_bins: int
    newest_time: float | None
    samples: list[_SampleState]
    residual_spread: bool = True


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(_State)


def _check_value(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class DemandProfiler:
    """Bounded day-of-week × time-of-day profile of demand, with percentile forecasts."""

    def __init__(
        self,
        bin_minutes: int = 5,
        history_days: int = 28,
        timezone: str = "UTC",
        neighbour_bins: int = 2,
        *,
        residual_spread: bool = True,
    ) -> None:
        if not _is_int(bin_minutes) or bin_minutes <= 0 or _MINUTES_PER_DAY % bin_minutes:
            raise ValueError(f"bin_minutes must be a positive integer dividing 1440, got {bin_minutes!r}")
        if not _is_int(history_days) or history_days < 1:
            raise ValueError(f"history_days must be an integer ≥ 1, got {history_days!r}")
        bins_per_day = _MINUTES_PER_DAY // bin_minutes
        if not _is_int(neighbour_bins) or not 0 <= 2 * neighbour_bins + 1 <= bins_per_day:
            raise ValueError(
                f"neighbour_bins must be an integer ≥ 0 whose window (2n+1 bins) fits in a day of "
                f"{bins_per_day} bins, got {neighbour_bins!r}"
            )
        if not isinstance(timezone, str):
            raise ValueError(f"timezone must be an IANA zone name, got {timezone!r}")
        try:
            tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise ValueError(f"timezone must be a valid IANA zone name, got {timezone!r}") from exc
        if not isinstance(residual_spread, bool):
            raise ValueError(f"residual_spread must be a bool, got {residual_spread!r}")

        self._bin_minutes = bin_minutes
        self._history_days = history_days
        self._timezone = timezone
        self._neighbour_bins = neighbour_bins
        self._residual_spread = residual_spread
        self._tz = tz
        self._bins_per_day = bins_per_day
        self._bins_per_week = bins_per_day * _DAYS_PER_WEEK
        self._window_bins = history_days * bins_per_day
        # Absolute bin key = local date ordinal × bins per day + bin of the day: consecutive local bins
        # have consecutive keys, and the position in the week follows from the key alone.
        self._samples: dict[int, _Sample] = {}
        self._by_position: list[set[int]] = [set() for _ in range(self._bins_per_week)]
        self._newest_key: int | None = None
        self._newest_time: float | None = None
        # (P75/P50, P95/P50) of the residual ratios; None = not enough residuals; stale when outdated.
        self._spread: tuple[float, float] | None = None
        self._spread_stale = True

    # -- configuration and state ---------------------------------------------------------------------

    @property
    def bin_minutes(self) -> int:
        return self._bin_minutes

    @property
    def history_days(self) -> int:
        return self._history_days

    @property
    def timezone(self) -> str:
        return self._timezone

    @property
    def neighbour_bins(self) -> int:
        return self._neighbour_bins

    @property
    def residual_spread(self) -> bool:
        return self._residual_spread

    @property
    def sample_count(self) -> int:
        """Number of absolute bins held (each merges every observation of that bin on that date)."""
        return len(self._samples)

    @property
    def newest_time(self) -> float | None:
        """The latest timestamp recorded, or None before the first record."""
        return self._newest_time

    # -- time ----------------------------------------------------------------------------------------

    def _key(self, t: float) -> int:
        try:
            local = datetime.fromtimestamp(t, self._tz)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"t must be a UNIX timestamp within the calendar's range, got {t!r}") from exc
        bin_of_day = (local.hour * 60 + local.minute) // self._bin_minutes
        return local.toordinal() * self._bins_per_day + bin_of_day

    def _position(self, key: int) -> int:
        # Ordinal 1 (0001-01-01) is a Monday, so shifting by one day puts Monday 00:00 at position 0.
        return (key - self._bins_per_day) % self._bins_per_week

    # -- recording -----------------------------------------------------------------------------------

    def record(self, t: float, rps: float, prompt_tokens: float, output_tokens: float) -> None:
        """Merge one observation into the sample of its absolute bin."""
        if not math.isfinite(t):
            raise ValueError(f"t must be a finite UNIX timestamp, got {t!r}")
        _check_value("rps", rps)
        _check_value("prompt_tokens", prompt_tokens)
        _check_value("output_tokens", output_tokens)
        key = self._key(t)
        if self._newest_key is None or key > self._newest_key:
            self._advance(key)
        elif key <= self._newest_key - self._window_bins:
            # Older than the window: it would be pruned at once, so it never enters memory.
            return
        if self._newest_time is None or t > self._newest_time:
            self._newest_time = t
        self._add(key, 1, rps, rps * prompt_tokens, rps * output_tokens)

    def _add(
        self, key: int, count: int, rps_sum: float, prompt_weighted: float, output_weighted: float
    ) -> None:
        sample = self._samples.get(key)
        if sample is None:
            sample = self._samples[key] = _Sample()
            self._by_position[self._position(key)].add(key)
        sample.count += count
        sample.rps_sum += rps_sum
        sample.prompt_weighted += prompt_weighted
        sample.output_weighted += output_weighted
        self._spread_stale = True

    def _advance(self, newest_key: int) -> None:
        """Move the newest bin forward and drop the samples that fell out of the window."""
        old_cutoff = None if self._newest_key is None else self._newest_key - self._window_bins + 1
        self._newest_key = newest_key
        new_cutoff = newest_key - self._window_bins + 1
        if old_cutoff is None or not self._samples:
            return
        # Walk only the keys that left the window (amortised O(1) per bin of time), unless the jump is
        # longer than what is held, where scanning the held samples is cheaper.
        if new_cutoff - old_cutoff <= len(self._samples):
            expired: Iterable[int] = range(old_cutoff, new_cutoff)
        else:
            expired = [k for k in self._samples if k < new_cutoff]
        for key in expired:
            if self._samples.pop(key, None) is not None:
                self._by_position[self._position(key)].discard(key)
                self._spread_stale = True

    # -- forecasting ---------------------------------------------------------------------------------

    def _cell_positions(self, position: int, all_days: bool) -> set[int]:
        n = self._neighbour_bins
        days = range(_DAYS_PER_WEEK) if all_days else range(1)
        return {
            (position + day * self._bins_per_day + offset) % self._bins_per_week
            for day in days
            for offset in range(-n, n + 1)
        }

    def _collect(self, positions: Iterable[int]) -> list[_Sample]:
        return [self._samples[key] for p in positions for key in self._by_position[p]]

    def predict(self, t: float) -> DemandForecast:
        """Percentiles of demand at UNIX time ``t`` from comparable past bins."""
        if not math.isfinite(t):
            raise ValueError(f"t must be a finite UNIX timestamp, got {t!r}")
        if not self._samples:
            raise ProfilerEmptyError("the demand profiler has no history to forecast from")
        position = self._position(self._key(t))
        source: ForecastSource = "cell"
        samples = self._collect(self._cell_positions(position, all_days=False))
        if not samples:
            source = "nearby"
            samples = self._collect(self._cell_positions(position, all_days=True))
        if not samples:
            source = "global"
            samples = list(self._samples.values())
        return self._forecast(samples, source)

    def _forecast(self, samples: list[_Sample], source: ForecastSource) -> DemandForecast:
        n = len(samples)
        rps = np.fromiter((s.rps for s in samples), dtype=np.float64, count=n)
        tps = np.fromiter((s.tokens_per_s for s in samples), dtype=np.float64, count=n)
        prompt, output = self._token_mix(samples) or self._token_mix(self._samples.values()) or (0.0, 0.0)
        r50, r75, r95 = self._band(rps)
        t50, t75, t95 = self._band(tps)
        return DemandForecast(
            p50=Demand(r50, prompt, output),
            p75=Demand(r75, prompt, output),
            p95=Demand(r95, prompt, output),
            tps_p50=t50,
            tps_p75=t75,
            tps_p95=t95,
            samples=n,
            source=source,
        )

    def _band(self, values: FloatArray) -> tuple[float, float, float]:
        p50, p75, p95 = (float(v) for v in np.percentile(values, _PERCENTILES))
        spread = self._current_spread()
        if spread is not None:
            p75 = max(p75, p50 * spread[0])
            p95 = max(p95, p50 * spread[1])
        # Keeps P50 ≤ P75 ≤ P95 exact against rounding in interpolation and in the products above.
        p75 = max(p75, p50)
        p95 = max(p95, p75)
        return p50, p75, p95

    @staticmethod
    def _token_mix(samples: Iterable[_Sample]) -> tuple[float, float] | None:
        """Request-weighted mean prompt/output tokens; None when no sample saw a request."""
        weight = prompt = output = 0.0
        for s in samples:
            if s.rps_sum > 0:
                # A sample's requests ∝ its mean rate (bins have equal length); its token means are its
                # own rate-weighted means, so its contribution is rps × weighted sum / rps_sum.
                share = s.rps / s.rps_sum
                weight += s.rps
                prompt += s.prompt_weighted * share
                output += s.output_weighted * share
        if weight <= 0:
            return None
        return prompt / weight, output / weight

    # -- residual spread -----------------------------------------------------------------------------

    def _current_spread(self) -> tuple[float, float] | None:
        if not self._residual_spread:
            return None
        if self._spread_stale:
            self._spread = self._fit_spread()
            self._spread_stale = False
        return self._spread

    def _fit_spread(self) -> tuple[float, float] | None:
        """(P75/P50, P95/P50) of sample ÷ the mean of its cell without its own occasion."""
        if len(self._samples) < _MIN_RESIDUALS or self._newest_key is None:
            return None
        n = self._neighbour_bins
        bpd, bpw = self._bins_per_day, self._bins_per_week
        keys = np.fromiter(self._samples.keys(), dtype=np.int64, count=len(self._samples))
        rps = np.fromiter((s.rps for s in self._samples.values()), dtype=np.float64, count=len(keys))

        # The own occasion: samples within ±n bins in absolute time, from a dense, padded timeline.
        slot = keys - (self._newest_key - self._window_bins + 1) + n
        dense_sum = np.zeros(self._window_bins + 2 * n)
        dense_cnt = np.zeros(self._window_bins + 2 * n)
        dense_sum[slot] = rps
        dense_cnt[slot] = 1.0
        # Shifted sums rather than a running cumsum: no cancellation over the whole timeline.
        own_sum = sum((dense_sum[slot + o] for o in range(-n, n + 1)), np.zeros(len(keys)))
        own_cnt = sum((dense_cnt[slot + o] for o in range(-n, n + 1)), np.zeros(len(keys)))

        # The cell: every week's samples at positions within ±n (circular over the week), and the
        # nearby cells: the same on all seven days. The own occasion lies inside both.
        position = (keys - bpd) % bpw
        pos_sum = np.bincount(position, weights=rps, minlength=bpw)
        pos_cnt = np.bincount(position, minlength=bpw).astype(np.float64)
        cell_sum = sum((np.roll(pos_sum, -o) for o in range(-n, n + 1)), np.zeros(bpw))
        cell_cnt = sum((np.roll(pos_cnt, -o) for o in range(-n, n + 1)), np.zeros(bpw))
        near_sum = np.tile(cell_sum.reshape(_DAYS_PER_WEEK, bpd).sum(axis=0), _DAYS_PER_WEEK)
        near_cnt = np.tile(cell_cnt.reshape(_DAYS_PER_WEEK, bpd).sum(axis=0), _DAYS_PER_WEEK)

        ref_cnt = cell_cnt[position] - own_cnt
        ref_sum = cell_sum[position] - own_sum
        use_near = ref_cnt < 0.5
        ref_cnt = np.where(use_near, near_cnt[position] - own_cnt, ref_cnt)
        ref_sum = np.where(use_near, near_sum[position] - own_sum, ref_sum)
        # Cancellation in the subtractions can leave tiny non-zero sums where the reference is empty.
        valid = (ref_cnt > 0.5) & (ref_sum > 1e-12 * max(float(rps.max()), 1.0))
        if int(valid.sum()) < _MIN_RESIDUALS:
            return None
        ratio = rps[valid] / (ref_sum[valid] / ref_cnt[valid])
        q50, q75, q95 = (float(v) for v in np.percentile(ratio, _PERCENTILES))
        if not q50 > 0:
            return None
        return q75 / q50, q95 / q50

    # -- persistence ---------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The configuration and every sample, msgpack-encoded with a version field."""
        state = _State(
            version=_STATE_VERSION,
            bin_minutes=self._bin_minutes,
            history_days=self._history_days,
            timezone=self._timezone,
            neighbour_bins=self._neighbour_bins,
            newest_time=self._newest_time,
            samples=[
                _SampleState(key, s.count, s.rps_sum, s.prompt_weighted, s.output_weighted)
                for key, s in sorted(self._samples.items())
            ],
            residual_spread=self._residual_spread,
        )
        return _encoder.encode(state)

    def restore(self, data: bytes) -> None:
        """Replace the samples with those saved by :meth:`to_bytes`; ValueError, and no change, for
        anything else or for a profile binned differently (bin width, zone or history length)."""
        saved = DemandProfiler.from_bytes(data)
        mine = (self._bin_minutes, self._timezone, self._history_days)
        theirs = (saved._bin_minutes, saved._timezone, saved._history_days)
        if mine != theirs:
            raise ValueError(f"saved demand profile is binned as {theirs}, this profiler as {mine}")
        self._samples = saved._samples
        self._by_position = saved._by_position
        self._newest_key = saved._newest_key
        self._newest_time = saved._newest_time
        self._spread_stale = True

    @classmethod
    def from_bytes(cls, data: bytes) -> DemandProfiler:
        """Rebuild a profiler saved by :meth:`to_bytes`; anything else raises ValueError."""
        try:
            state = _decoder.decode(data)
        except (msgspec.DecodeError, TypeError) as exc:
            raise ValueError(f"not a saved demand profiler: {exc}") from exc
        if state.version != _STATE_VERSION:
            raise ValueError(
                f"saved demand profiler has version {state.version}, this code reads {_STATE_VERSION}"
            )
        try:
            profiler = cls(
                state.bin_minutes,
                state.history_days,
                state.timezone,
                state.neighbour_bins,
                residual_spread=state.residual_spread,
            )
        except ValueError as exc:
            raise ValueError(f"not a saved demand profiler: {exc}") from exc
        if state.newest_time is not None and not math.isfinite(state.newest_time):
            raise ValueError("not a saved demand profiler: newest_time is not finite")
        samples = sorted(state.samples, key=lambda s: s.key)
        if samples and samples[0].key <= samples[-1].key - profiler._window_bins:
            raise ValueError("not a saved demand profiler: samples span more than history_days")
        for s in samples:
            if not all(math.isfinite(v) for v in (s.rps_sum, s.prompt_weighted, s.output_weighted)):
                raise ValueError(f"not a saved demand profiler: sample {s.key} has a non-finite value")
            if s.key in profiler._samples:
                raise ValueError(f"not a saved demand profiler: sample {s.key} appears twice")
            profiler._add(s.key, s.count, s.rps_sum, s.prompt_weighted, s.output_weighted)
        if samples:
            profiler._newest_key = samples[-1].key
        profiler._newest_time = state.newest_time
        return profiler
