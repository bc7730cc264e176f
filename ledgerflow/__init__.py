"""ledgerflow: durable, event-sourced ETL pipelines on Ray.

    import ledgerflow as lf

    pipeline = lf.Pipeline("flights", params=FlightParams)
"""

__version__ = "0.1.0"

from ledgerflow.actors import (  # noqa: E402
    CodeChangedError,
    ConfigurationError,
    Context,
    CsvSource,
    DecisionRefusedError,
    LeaseHeldError,
    McpCallError,
    McpServer,
    Middleware,
    ParameterError,
    ParquetDataset,
    ParquetSource,
    Pipeline,
    PipelineDefinitionError,
    PipelineImportError,
    PolicyConfigurationError,
    PolicyRule,
    PostgresTable,
    Retry,
    RouteInput,
    RunExistsError,
    RunResult,
    SchemaMismatchError,
    Secret,
    Settings,
    SqlSource,
    SqliteTable,
    Validation,
    cancel_run,
    decide,
    load_policy,
    load_state,
    resume_run,
    start_run,
)
from ledgerflow.projections import History, history  # noqa: E402
from ledgerflow.events import (  # noqa: E402
    LedgerflowError,
    RunState,
    TamperedLogError,
    UsageError,
)

run = start_run
resume = resume_run
cancel = cancel_run

__all__ = [
    "CodeChangedError",
    "ConfigurationError",
    "Context",
    "CsvSource",
    "DecisionRefusedError",
    "History",
    "LeaseHeldError",
    "LedgerflowError",
    "McpCallError",
    "McpServer",
    "Middleware",
    "ParameterError",
    "ParquetDataset",
    "ParquetSource",
    "Pipeline",
    "PipelineDefinitionError",
    "PipelineImportError",
    "PolicyConfigurationError",
    "PolicyRule",
    "PostgresTable",
    "Retry",
    "RouteInput",
    "RunExistsError",
    "RunResult",
    "RunState",
    "SchemaMismatchError",
    "Secret",
    "Settings",
    "SqlSource",
    "SqliteTable",
    "TamperedLogError",
    "UsageError",
    "Validation",
    "__version__",
    "cancel",
    "cancel_run",
    "decide",
    "history",
    "load_policy",
    "load_state",
    "resume",
    "resume_run",
    "run",
    "start_run",
]
