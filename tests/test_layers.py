"""The package's layering and public API."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import ledgerflow

PACKAGE = pathlib.Path(ledgerflow.__file__).parent


def _imports(layer: str) -> set[str]:
    found: set[str] = set()
    for path in (PACKAGE / layer).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
    return found


def test_events_layer_imports_no_other_layer_or_ray():
    imported = _imports("events")
    assert not any(name == "ray" or name.startswith("ray.") for name in imported)
    assert not any(name.startswith(("ledgerflow.actors", "ledgerflow.projections", "ledgerflow.cli"))
                   for name in imported)


def test_projections_layer_imports_no_actors():
    assert not any(name.startswith("ledgerflow.actors") for name in _imports("projections"))


def test_events_import_does_not_load_ray():
    # The package's __init__ imports the runtime, so stub the package and load the layer alone.
    script = (
        "import sys, types\n"
        "package = types.ModuleType('ledgerflow')\n"
        f"package.__path__ = [{str(PACKAGE)!r}]\n"
        "sys.modules['ledgerflow'] = package\n"
        "import ledgerflow.events\n"
        "print('ray' in sys.modules)\n"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "False"


def test_public_api_exports():
    assert sorted(ledgerflow.__all__) == [
        "CodeChangedError", "ConfigurationError", "Context", "CsvSource", "DecisionRefusedError", "History", "LeaseHeldError",
        "LedgerflowError", "McpCallError", "McpServer", "Middleware", "ParameterError", "ParquetDataset",
        "ParquetSource", "Pipeline", "PipelineDefinitionError", "PipelineImportError", "PolicyConfigurationError",
        "PolicyRule", "PostgresTable", "Retry", "RouteInput", "RunExistsError", "RunResult", "RunState",
        "SchemaMismatchError", "Secret", "Settings", "SqlSource", "SqliteTable", "TamperedLogError", "UsageError",
        "Validation", "__version__", "cancel", "cancel_run", "decide", "history", "load_policy", "load_state",
        "resume", "resume_run", "run", "start_run",
    ]
    for name in ledgerflow.__all__:
        assert hasattr(ledgerflow, name), name
