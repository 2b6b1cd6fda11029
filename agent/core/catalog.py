"""The instance catalog: GPU node types, their prices per tier, and the pools (zones) they run in.

A catalog is a TOML file with a ``[catalog]`` table (name, source) and one ``[types.<name>]`` table per
node type. Loading validates every field; a bad file raises :class:`CatalogError` with one line naming the
file, the entry and the field, so that start-up can stop with that line.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from agent.core.validation import split_error

Tier = Literal["reserved", "spot", "ondemand"]
TIERS: tuple[Tier, ...] = ("reserved", "spot", "ondemand")

# Cloud list prices are quoted per month of 730 hours (365 × 24 / 12).
HOURS_PER_MONTH = 730.0

_POOL_NAME = re.compile(r"^[A-Za-z0-9_-]+$")

Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


_FINITE_FIELDS = (
    "ondemand_hourly",
    "reserved_1yr_hourly",
    "spot_hourly",
    "prefill_tokens_per_s",
    "decode_tokens_per_s",
)


class CatalogError(ValueError):
    """A catalog that cannot be used; the message is one line naming file, entry and field."""


class _TypeSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Config files (unlike wire messages) reject unknown fields: a typo must not silently use a default.
    gpus: Annotated[int, msgspec.Meta(ge=1)]
    gpu_type: Annotated[str, msgspec.Meta(min_length=1)]
    ondemand_hourly: Positive
    reserved_1yr_hourly: Positive
    spot_hourly: Positive
    spot_reclaim_per_hour: Annotated[float, msgspec.Meta(ge=0, lt=1)]
    max_batch: Annotated[int, msgspec.Meta(ge=1)]
    prefill_tokens_per_s: Positive
    decode_tokens_per_s: Positive
    pools: list[str] = msgspec.field(default_factory=lambda: ["default"])
    max_instances: Annotated[int, msgspec.Meta(ge=0)] | None = None
    notes: str = ""


class _CatalogHeader(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    source: str = ""
    notes: str = ""


@dataclass(frozen=True, slots=True)
class InstanceType:
    """One node type (e.g. 8×H100) with its prices per tier and its serving throughput."""

    name: str
    gpus: int
    gpu_type: str
    ondemand_hourly: float
    reserved_hourly: float
    spot_hourly: float
    spot_reclaim_per_hour: float
    max_batch: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    pools: tuple[str, ...] = ("default",)
    max_instances: int | None = None

    def price(self, tier: Tier) -> float:
        if tier == "reserved":
            return self.reserved_hourly
        if tier == "spot":
            return self.spot_hourly
        return self.ondemand_hourly

    @property
    def spot_reliability(self) -> float:
        """Expected share of a spot node's capacity still there an hour from now."""
        return 1.0 - self.spot_reclaim_per_hour


@dataclass(frozen=True, slots=True)
class Catalog:
    name: str
    types: Mapping[str, InstanceType]
    source: str = ""

    @property
    def main_type(self) -> InstanceType:
        """The first type in the file: the one single-type reports (the seed's table) use."""
        return next(iter(self.types.values()))

    def type(self, name: str) -> InstanceType:
        try:
            return self.types[name]
        except KeyError:
            raise CatalogError(f"catalog {self.name}: no instance type {name!r}") from None

    def pools(self) -> list[tuple[str, str]]:
        """Every (type, pool) pair, in catalog order."""
        return [(t.name, p) for t in self.types.values() for p in t.pools]


def parse_catalog(text: str, source_name: str) -> Catalog:
    """Parse catalog TOML text; ``source_name`` is what error messages call the file."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"catalog {source_name}: not valid TOML: {exc}") from None
    unknown = set(raw) - {"catalog", "types"}
    if unknown:
        raise CatalogError(f"catalog {source_name}: unknown top-level table {sorted(unknown)[0]!r}")
    try:
        header = msgspec.convert(raw.get("catalog", {}), _CatalogHeader)
    except msgspec.ValidationError as exc:
        field, reason = split_error(exc)
        raise CatalogError(f"catalog {source_name}: entry [catalog]: field {field!r}: {reason}") from None
    tables = raw.get("types")
    if not isinstance(tables, dict) or not tables:
        raise CatalogError(f"catalog {source_name}: no [types.<name>] entries")
    types: dict[str, InstanceType] = {}
    for name, table in tables.items():
        where = f"catalog {source_name}: entry {name!r}"
        if not _POOL_NAME.match(name):
            raise CatalogError(f"{where}: field 'name': only letters, digits, '-' and '_' are allowed")
        try:
            spec = msgspec.convert(table, _TypeSpec)
        except msgspec.ValidationError as exc:
            field, reason = split_error(exc)
            raise CatalogError(f"{where}: field {field!r}: {reason}") from None
        for field in _FINITE_FIELDS:
            if not math.isfinite(getattr(spec, field)):
                raise CatalogError(f"{where}: field {field!r}: must be a finite number")
        if not spec.pools:
            raise CatalogError(f"{where}: field 'pools': must list at least one pool")
        for pool in spec.pools:
            if not _POOL_NAME.match(pool):
                raise CatalogError(
                    f"{where}: field 'pools': {pool!r} may hold only letters, digits, '-' and '_'"
                )
        if len(set(spec.pools)) != len(spec.pools):
            raise CatalogError(f"{where}: field 'pools': a pool is listed twice")
        if not spec.spot_hourly <= spec.ondemand_hourly:
            raise CatalogError(f"{where}: field 'spot_hourly': must not exceed ondemand_hourly")
        if not spec.reserved_1yr_hourly <= spec.ondemand_hourly:
            raise CatalogError(f"{where}: field 'reserved_1yr_hourly': must not exceed ondemand_hourly")
        types[name] = InstanceType(
            name=name,
            gpus=spec.gpus,
            gpu_type=spec.gpu_type,
            ondemand_hourly=spec.ondemand_hourly,
            reserved_hourly=spec.reserved_1yr_hourly,
            spot_hourly=spec.spot_hourly,
            spot_reclaim_per_hour=spec.spot_reclaim_per_hour,
            max_batch=spec.max_batch,
            prefill_tokens_per_s=spec.prefill_tokens_per_s,
            decode_tokens_per_s=spec.decode_tokens_per_s,
            pools=tuple(spec.pools),
            max_instances=spec.max_instances,
        )
    return Catalog(name=header.name, types=types, source=header.source)


def load_catalog(path: str | Path) -> Catalog:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"catalog {path}: cannot read: {exc.strerror or exc}") from None
    return parse_catalog(text, str(path))
