"""Read models folded from the log: run tables, the audit trail, exports and notebook views.

This package imports ``ledgerflow.events`` only, never the runtime.
"""

from ledgerflow.projections._audit import EXPORT_FORMAT, audit_run, export_run
from ledgerflow.projections._history import (
    History,
    caught_up_projector,
    history,
    projections_path,
    run_sync,
)
from ledgerflow.projections._projector import LINEAGE_QUERY, TABLES, Projector

__all__ = [
    "EXPORT_FORMAT",
    "LINEAGE_QUERY",
    "TABLES",
    "History",
    "Projector",
    "audit_run",
    "caught_up_projector",
    "export_run",
    "history",
    "projections_path",
    "run_sync",
]
