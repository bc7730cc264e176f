"""The runtime: pipeline graphs, the run executor on Ray, tasks, leases, sinks and middleware."""

from ledgerflow.actors._context import Attempt, Context, LoggingMiddleware, Middleware, Secret
from ledgerflow.actors._errors import (
    CheckpointCorruptError,
    CodeChangedError,
    ConfigurationError,
    DecisionRefusedError,
    LeaseHeldError,
    ParameterError,
    PipelineDefinitionError,
    PipelineImportError,
    RunExistsError,
    SchemaMismatchError,
)
from ledgerflow.actors._files import BadRowError, CsvSource, ParquetSource, SourceError
from ledgerflow.actors._executor import Executor, ExecutorConfig, RunActor, RunOutcome
from ledgerflow.actors._parquet_sink import ParquetDataset
from ledgerflow.actors._postgres_sink import PostgresTable
from ledgerflow.actors._sql import SqlSource, SqlSourceError
from ledgerflow.actors._lease import Lease, lease_is_free
from ledgerflow.actors._loader import canonical_locator, load_pipeline, locator_of
from ledgerflow.actors._pipeline import (
    Node,
    Pipeline,
    Retry,
    Route,
    RouteInput,
    SqliteTable,
    Validation,
)
from ledgerflow.actors._runner import (
    EXIT_CODES,
    ExecutorDiedError,
    RunResult,
    Settings,
    cancel_run,
    decide,
    default_submitter,
    ensure_ray,
    load_state,
    resume_run,
    start_run,
    status_of,
)

__all__ = [
    "EXIT_CODES",
    "Attempt",
    "BadRowError",
    "CheckpointCorruptError",
    "CodeChangedError",
    "ConfigurationError",
    "Context",
    "CsvSource",
    "DecisionRefusedError",
    "Executor",
    "ExecutorConfig",
    "ExecutorDiedError",
    "Lease",
    "LeaseHeldError",
    "LoggingMiddleware",
    "Middleware",
    "Node",
    "ParameterError",
    "ParquetDataset",
    "ParquetSource",
    "Pipeline",
    "PostgresTable",
    "PipelineDefinitionError",
    "PipelineImportError",
    "Retry",
    "Route",
    "RouteInput",
    "RunActor",
    "RunExistsError",
    "RunOutcome",
    "RunResult",
    "SchemaMismatchError",
    "Secret",
    "Settings",
    "SourceError",
    "SqlSource",
    "SqlSourceError",
    "SqliteTable",
    "Validation",
    "canonical_locator",
    "cancel_run",
    "decide",
    "default_submitter",
    "ensure_ray",
    "lease_is_free",
    "load_pipeline",
    "load_state",
    "locator_of",
    "resume_run",
    "start_run",
    "status_of",
]
