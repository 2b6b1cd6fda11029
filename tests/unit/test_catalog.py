"""The instance catalog, read as a specification: what the shipped catalogs hold, and what a bad one says.

A catalog file that cannot be used stops start-up with one line naming the file, the entry and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

import agent
from agent.core.catalog import HOURS_PER_MONTH, TIERS, Catalog, CatalogError, InstanceType, load_catalog

CATALOGS = Path(agent.__file__).parent / "catalogs"

# The seed sketch's monthly table for 4 × h100_8x, 24/7.
SEED_TABLE_ALL_ONDEMAND = 94_700.0
SEED_TABLE_ALL_RESERVED = 55_000.0


@pytest.fixture(scope="module")
def seed() -> Catalog:
    return load_catalog(CATALOGS / "seed.toml")


@pytest.fixture(scope="module")
def gcp() -> Catalog:
    return load_catalog(CATALOGS / "gcp-2026-07.toml")


# -- the seed catalog ---------------------------------------------------------------------------------


def test_seed_catalog_holds_exactly_the_seeds_two_types_in_the_seeds_order(seed: Catalog) -> None:
    assert seed.name == "seed"
    assert list(seed.types) == ["h100_8x", "a100_8x"]
    assert seed.main_type.name == "h100_8x"


def test_seed_h100_has_every_figure_of_the_seed_sketch(seed: Catalog) -> None:
    assert seed.type("h100_8x") == InstanceType(
        name="h100_8x",
        gpus=8,
        gpu_type="H100",
        ondemand_hourly=32.77,
        reserved_hourly=19.06,
        spot_hourly=9.83,
        spot_reclaim_per_hour=0.05,
        max_batch=256,
        prefill_tokens_per_s=50_000,
        decode_tokens_per_s=8_000,
        pools=("default",),
        max_instances=None,
    )


def test_seed_a100_has_every_figure_of_the_seed_sketch(seed: Catalog) -> None:
    assert seed.type("a100_8x") == InstanceType(
        name="a100_8x",
        gpus=8,
        gpu_type="A100-80G",
        ondemand_hourly=22.03,
        reserved_hourly=13.22,
        spot_hourly=6.61,
        spot_reclaim_per_hour=0.08,
        max_batch=128,
        prefill_tokens_per_s=30_000,
        decode_tokens_per_s=5_000,
        pools=("default",),
        max_instances=None,
    )


def test_seed_prices_at_730_hours_a_month_reproduce_the_seeds_table_within_2_percent(seed: Catalog) -> None:
    h100 = seed.main_type
    assert 4 * h100.ondemand_hourly * HOURS_PER_MONTH == pytest.approx(SEED_TABLE_ALL_ONDEMAND, rel=0.02)
    assert 4 * h100.reserved_hourly * HOURS_PER_MONTH == pytest.approx(SEED_TABLE_ALL_RESERVED, rel=0.02)


# -- the GCP catalog ----------------------------------------------------------------------------------


def test_gcp_catalog_prices_a3_highgpu_8g_from_the_us_central1_list(gcp: Catalog) -> None:
    a3 = gcp.type("a3-highgpu-8g")
    assert gcp.name == "gcp-2026-07"
    assert gcp.main_type is a3
    assert (a3.ondemand_hourly, a3.spot_hourly, a3.reserved_hourly) == (88.49, 50.61, 61.38)
    assert (a3.gpus, a3.gpu_type) == (8, "H100-80GB")
    assert a3.pools == ("us-central1-a", "us-central1-b", "us-central1-c")


def test_gcp_catalog_runs_a2_ultragpu_8g_in_two_zones(gcp: Catalog) -> None:
    a2 = gcp.type("a2-ultragpu-8g")
    assert (a2.ondemand_hourly, a2.spot_hourly, a2.reserved_hourly) == (40.55, 22.08, 28.13)
    assert a2.pools == ("us-central1-a", "us-central1-c")


@pytest.mark.parametrize("catalog_name", ["seed", "gcp-2026-07"])
def test_every_shipped_type_is_cheapest_on_spot_then_reserved_then_on_demand(catalog_name: str) -> None:
    catalog = load_catalog(CATALOGS / f"{catalog_name}.toml")
    for itype in catalog.types.values():
        assert 0 < itype.spot_hourly < itype.reserved_hourly < itype.ondemand_hourly, itype.name


# -- the InstanceType and Catalog API -----------------------------------------------------------------


def test_price_returns_the_hourly_price_of_each_tier(seed: Catalog) -> None:
    h100 = seed.main_type
    prices = {tier: h100.price(tier) for tier in TIERS}
    assert prices == {"reserved": 19.06, "spot": 9.83, "ondemand": 32.77}


def test_spot_reliability_is_the_chance_a_spot_node_survives_the_hour(seed: Catalog) -> None:
    assert seed.type("h100_8x").spot_reliability == pytest.approx(0.95)
    assert seed.type("a100_8x").spot_reliability == pytest.approx(0.92)


def test_pools_lists_every_type_and_zone_pair_in_catalog_order(gcp: Catalog, seed: Catalog) -> None:
    assert gcp.pools() == [
        ("a3-highgpu-8g", "us-central1-a"),
        ("a3-highgpu-8g", "us-central1-b"),
        ("a3-highgpu-8g", "us-central1-c"),
        ("a2-ultragpu-8g", "us-central1-a"),
        ("a2-ultragpu-8g", "us-central1-c"),
    ]
    assert seed.pools() == [("h100_8x", "default"), ("a100_8x", "default")]


def test_asking_for_a_type_the_catalog_lacks_is_a_catalog_error(seed: Catalog) -> None:
    with pytest.raises(CatalogError, match="no instance type 'b200_8x'"):
        seed.type("b200_8x")


# -- bad catalogs -------------------------------------------------------------------------------------

ENTRY = "gpu-node"
VALID_TYPE: Mapping[str, object] = {
    "gpus": 8,
    "gpu_type": "H100",
    "ondemand_hourly": 30.0,
    "reserved_1yr_hourly": 20.0,
    "spot_hourly": 10.0,
    "spot_reclaim_per_hour": 0.05,
    "max_batch": 256,
    "prefill_tokens_per_s": 50_000,
    "decode_tokens_per_s": 8_000,
}
_DROP = object()


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def catalog_text(entry: str = ENTRY, header: str = 'name = "test"', **changes: object) -> str:
    """A catalog with one valid type, changed by ``changes`` (``_DROP`` removes a field)."""
    fields = {**VALID_TYPE, **changes}
    lines = ["[catalog]", header, "", f'[types."{entry}"]']
    lines += [f"{key} = {_toml(value)}" for key, value in fields.items() if value is not _DROP]
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    assert str(path) in message
    return message


def test_a_valid_catalog_loads_and_defaults_to_one_pool(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, catalog_text()))
    assert catalog.name == "test"
    assert catalog.type(ENTRY).pools == ("default",)
    assert catalog.type(ENTRY).max_instances is None


@pytest.mark.parametrize(
    ("text", "entry", "field"),
    [
        pytest.param(catalog_text(max_batch=_DROP), f"'{ENTRY}'", "max_batch", id="missing-field"),
        pytest.param(catalog_text(gpus="eight"), f"'{ENTRY}'", "'gpus'", id="wrong-type"),
        pytest.param(catalog_text(gpus=8.5), f"'{ENTRY}'", "'gpus'", id="fractional-gpus"),
        pytest.param(catalog_text(spot_hourly=-1.0), f"'{ENTRY}'", "'spot_hourly'", id="negative-price"),
        pytest.param(catalog_text(ondemand_hourly=0.0), f"'{ENTRY}'", "'ondemand_hourly'", id="zero-price"),
        pytest.param(catalog_text(spot_hourly=31.0), f"'{ENTRY}'", "'spot_hourly'", id="spot-above-ondemand"),
        pytest.param(
            catalog_text(reserved_1yr_hourly=31.0),
            f"'{ENTRY}'",
            "'reserved_1yr_hourly'",
            id="reserved-above-ondemand",
        ),
        pytest.param(
            catalog_text(spot_reclaim_per_hour=1.0),
            f"'{ENTRY}'",
            "'spot_reclaim_per_hour'",
            id="reclaim-is-1",
        ),
        pytest.param(catalog_text(pools=[]), f"'{ENTRY}'", "'pools'", id="empty-pools"),
        pytest.param(catalog_text(pools=["zone-a", "zone-a"]), f"'{ENTRY}'", "'pools'", id="duplicate-pool"),
        pytest.param(catalog_text(pools=["zone a"]), f"'{ENTRY}'", "'pools'", id="bad-pool-name"),
        pytest.param(catalog_text(spot_hourlly=9.0), f"'{ENTRY}'", "spot_hourlly", id="unknown-field-typo"),
        pytest.param(catalog_text(entry="gpu node"), "'gpu node'", "'name'", id="bad-type-name"),
        pytest.param(
            catalog_text(header='name = "test"\nsorce = "typo"'),
            "[catalog]",
            "sorce",
            id="header-unknown-field",
        ),
        pytest.param(
            catalog_text(header='source = "no name"'), "[catalog]", "name", id="header-without-name"
        ),
    ],
)
def test_a_bad_entry_is_one_line_naming_file_entry_and_field(
    tmp_path: Path, text: str, entry: str, field: str
) -> None:
    message = load_error(write(tmp_path, text))
    assert f"entry {entry}" in message
    assert field in message


def test_a_bad_pool_name_is_quoted_in_the_message(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, catalog_text(pools=["us-central1-a", "zone a"])))
    assert "'zone a'" in message


def test_invalid_toml_is_one_line_naming_the_file_and_the_position(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, catalog_text() + "oops = = 3\n"))
    assert "not valid TOML" in message
    assert "line 14" in message


def test_a_catalog_without_types_is_rejected(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, '[catalog]\nname = "empty"\n'))
    assert "[types.<name>]" in message


def test_an_unknown_top_level_table_is_rejected_by_name(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, catalog_text() + "\n[prices]\nh100 = 1.0\n"))
    assert "unknown top-level table 'prices'" in message


@pytest.mark.parametrize("make", [pytest.param("missing", id="missing"), pytest.param("dir", id="directory")])
def test_an_unreadable_file_is_one_line_naming_the_file(tmp_path: Path, make: str) -> None:
    path = tmp_path / "catalog.toml"
    if make == "dir":
        path.mkdir()
    message = load_error(path)
    assert "cannot read" in message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        pytest.param(catalog_text(max_batch=_DROP), "max_batch", id="missing-field"),
        pytest.param(catalog_text(spot_hourlly=9.0), "spot_hourlly", id="unknown-field"),
    ],
)
def test_the_field_slot_names_a_missing_or_unknown_field(tmp_path: Path, text: str, field: str) -> None:
    message = load_error(write(tmp_path, text))
    assert f"field '{field}'" in message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        pytest.param(catalog_text(ondemand_hourly=float("inf")), "ondemand_hourly", id="price"),
        pytest.param(catalog_text(decode_tokens_per_s=float("inf")), "decode_tokens_per_s", id="throughput"),
    ],
)
def test_an_infinite_price_or_throughput_is_rejected(tmp_path: Path, text: str, field: str) -> None:
    message = load_error(write(tmp_path, text))
    assert f"field '{field}'" in message
