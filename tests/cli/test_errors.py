"""Input errors exit with status 2 and print one JSON object that names the invalid input."""

from __future__ import annotations

import pytest

UNKNOWN_RUN = "no-such-run"

RUN_COMMANDS = [
    pytest.param(["show", UNKNOWN_RUN], id="show"),
    pytest.param(["events", UNKNOWN_RUN], id="events"),
    pytest.param(["events", UNKNOWN_RUN, "--follow"], id="events-follow"),
    pytest.param(["replay", UNKNOWN_RUN], id="replay"),
    pytest.param(["verify", UNKNOWN_RUN], id="verify"),
    pytest.param(["resume", UNKNOWN_RUN], id="resume"),
    pytest.param(["approve", UNKNOWN_RUN, "--reviewer", "alice"], id="approve"),
    pytest.param(["reject", UNKNOWN_RUN, "--reviewer", "alice", "--comment", "no"], id="reject"),
    pytest.param(["cancel", UNKNOWN_RUN], id="cancel"),
    pytest.param(["audit", UNKNOWN_RUN], id="audit"),
]


@pytest.mark.parametrize("args", RUN_COMMANDS)
def test_unknown_run_exits_2(finished_run, args):
    result = finished_run.cli(*args, "--json")

    assert result.returncode == 2, str(result)
    payload = result.json()
    assert payload["run_id"] == UNKNOWN_RUN
    assert "not found" in payload["error"]
    assert payload["exit_code"] == 2
    assert f"error: run {UNKNOWN_RUN!r} not found" in result.stderr


def test_unknown_run_without_log_exits_2(cli):
    result = cli("show", UNKNOWN_RUN, "--json")

    assert result.returncode == 2, str(result)
    assert "no event log" in result.json()["error"]


def test_invalid_parameter_named(cli, helpers):
    result = cli("run", helpers.pipeline_path("gated.py"), "--param", "factor=double", "--json")

    assert result.returncode == 2, str(result)
    payload = result.json()
    assert payload["error_type"] == "ParameterError"
    assert "factor" in payload["error"]
    assert "'double'" in payload["error"]


def test_unknown_parameter_named(cli, helpers):
    result = cli("run", helpers.pipeline_path("gated.py"), "--param", "colour=red", "--json")

    assert result.returncode == 2, str(result)
    payload = result.json()
    assert "unknown parameter 'colour'" in payload["error"]
    assert "parts, factor" in payload["error"]


@pytest.mark.parametrize("param", ["factor", "=2"])
def test_bad_param_syntax(cli, helpers, param):
    result = cli("run", helpers.pipeline_path("gated.py"), "--param", param, "--json")

    assert result.returncode == 2, str(result)
    payload = result.json()
    assert "KEY=VALUE" in payload["error"]
    assert repr(param) in payload["error"]


@pytest.mark.parametrize("locator, expected", [
    pytest.param("broken.py", "No module named 'ledgerflow_no_such_module'", id="import-error"),
    pytest.param("no_pipeline.py", "has no Pipeline named 'pipeline'", id="no-pipeline"),
    pytest.param("missing.py", "not found", id="missing-file"),
    pytest.param("gated.py:no_such_attribute", "has no Pipeline named 'no_such_attribute'", id="missing-attribute"),
])
def test_pipeline_import_failure(cli, helpers, locator, expected):
    result = cli("run", helpers.pipeline_path(locator), "--json")

    assert result.returncode == 2, str(result)
    payload = result.json()
    assert payload["error_type"] == "PipelineImportError"
    assert expected in payload["error"]
    assert not cli.logged("anything")


def test_missing_module_exits_2(cli):
    result = cli("run", "ledgerflow_no_such_module:pipeline", "--json")

    assert result.returncode == 2, str(result)
    assert result.json()["error_type"] == "PipelineImportError"


def test_run_id_already_used(finished_run, helpers):
    cli, run_id = finished_run.cli, finished_run.run_id

    result = cli("run", helpers.pipeline_path("gated.py"), "--run-id", run_id, "--json")

    assert result.returncode == 2, str(result)
    payload = result.json()
    assert payload["run_id"] == run_id
    assert "already used" in payload["error"]
    assert f"ledgerflow resume {run_id}" in payload["error"]
    assert len(cli.logged(run_id)) == finished_run.event_count


@pytest.mark.parametrize("run_id", ["bad/id", "x" * 65])
def test_invalid_run_id(cli, helpers, run_id):
    result = cli("run", helpers.pipeline_path("gated.py"), "--run-id", run_id, "--json")

    assert result.returncode == 2, str(result)
    assert "invalid run id" in result.json()["error"]


@pytest.mark.parametrize("command, options, missing", [
    pytest.param("approve", [], "--reviewer", id="approve-without-reviewer"),
    pytest.param("reject", ["--reviewer", "bob"], "--comment", id="reject-without-comment"),
])
def test_missing_option_is_usage_error(finished_run, command, options, missing):
    result = finished_run.cli(command, finished_run.run_id, *options, "--json")

    assert result.returncode == 2, str(result)
    assert f"Missing option '{missing}'" in result.stderr
    assert len(finished_run.cli.logged(finished_run.run_id)) == finished_run.event_count


def test_debug_prints_traceback(finished_run):
    quiet = finished_run.cli("show", UNKNOWN_RUN)
    verbose = finished_run.cli("show", UNKNOWN_RUN, "--debug")

    assert quiet.returncode == 2, str(quiet)
    assert "Traceback" not in quiet.stderr
    assert verbose.returncode == 2, str(verbose)
    assert "Traceback (most recent call last)" in verbose.stderr
    assert "RunNotFoundError" in verbose.stderr


def test_runs_rejects_unknown_store_kind(cli):
    result = cli("runs", "--store", "mysql://user@127.0.0.1/db")

    assert result.returncode == 2, str(result)
    assert "unsupported store URL 'mysql://user@127.0.0.1/db'" in result.stderr


def test_export_to_missing_directory_names_it(finished_run, tmp_path):
    target = tmp_path / "absent" / "run.jsonl"

    result = finished_run.cli("export", finished_run.run_id, str(target))

    assert result.returncode == 2, str(result)
    assert f"directory {target.parent} does not exist" in result.stderr


def test_debug_shows_node_traceback(cli, tmp_path):
    pipeline = tmp_path / "boom.py"
    pipeline.write_text(
        "import pyarrow as pa\nimport ledgerflow as lf\n\npipeline = lf.Pipeline('boom')\n\n\n"
        "@pipeline.extract\ndef numbers() -> pa.Table:\n    return pa.table({'a': [1]}).select(['x'])\n",
        encoding="utf-8",
    )

    plain = cli("run", str(pipeline), "--run-id", "boom-1")
    debug = cli("run", str(pipeline), "--run-id", "boom-2", "--debug")

    assert plain.returncode == 1, str(plain)
    assert f'File "{pipeline}", line 9' not in plain.stderr
    assert debug.returncode == 1, str(debug)
    assert f'File "{pipeline}", line 9' in debug.stderr
