"""Definition-time checks of pipeline graphs and parameters. Nothing here needs Ray."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest
from pydantic import BaseModel

import ledgerflow as lf
from ledgerflow.actors._context import recorded_params


def _table() -> pa.Table:
    return pa.table({"x": [1]})


def test_definition_cycle_names_node():
    pipeline = lf.Pipeline("cycle")

    @pipeline.transform
    def first(second: pa.Table) -> pa.Table:
        return second

    @pipeline.transform
    def second(first: pa.Table) -> pa.Table:
        return first

    with pytest.raises(lf.PipelineDefinitionError) as caught:
        pipeline.check()
    assert caught.value.node in ("first", "second")
    assert "cycle" in str(caught.value)
    assert "first -> second" in str(caught.value) or "second -> first" in str(caught.value)


def test_definition_unknown_input_names_node():
    pipeline = lf.Pipeline("unknown_input")

    @pipeline.transform
    def enriched(missing_source: pa.Table) -> pa.Table:
        return missing_source

    with pytest.raises(lf.PipelineDefinitionError) as caught:
        pipeline.check()
    assert caught.value.node == "enriched"
    assert "'missing_source'" in str(caught.value)


def test_definition_unknown_after_names_node():
    pipeline = lf.Pipeline("unknown_after")
    pipeline.extract(_table, name="source", after="nowhere")

    with pytest.raises(lf.PipelineDefinitionError) as caught:
        pipeline.check()
    assert caught.value.node == "source"
    assert "'nowhere'" in str(caught.value)


def test_definition_duplicate_name_raises_at_declaration():
    pipeline = lf.Pipeline("duplicate")
    pipeline.extract(_table, name="rows")

    with pytest.raises(lf.PipelineDefinitionError) as caught:
        pipeline.transform(_table, name="rows")
    assert caught.value.node == "rows"
    assert "duplicate" in str(caught.value)
    assert list(pipeline.nodes) == ["rows"]


def test_definition_unknown_partitioned_like_names_node():
    pipeline = lf.Pipeline("unknown_partitioned_like")
    pipeline.transform(_table, name="per_month", partitioned_like="no_such_node")

    with pytest.raises(lf.PipelineDefinitionError) as caught:
        pipeline.check()
    assert caught.value.node == "per_month"
    assert "'no_such_node'" in str(caught.value)


def test_definition_partitioned_like_unpartitioned_names_node():
    pipeline = lf.Pipeline("partitioned_like_whole")
    pipeline.extract(_table, name="whole")
    pipeline.transform(_table, name="per_month", partitioned_like="whole")

    with pytest.raises(lf.PipelineDefinitionError) as caught:
        pipeline.check()
    assert caught.value.node == "per_month"
    assert "not partitioned" in str(caught.value)


def test_definition_route_to_missing_node_names_source():
    pipeline = lf.Pipeline("route_to_missing")
    pipeline.extract(_table, name="source")
    pipeline.route("source", when=lambda data: True, to="no_such_target")

    with pytest.raises(lf.PipelineDefinitionError) as caught:
        pipeline.check()
    assert caught.value.node == "source"
    assert "'no_such_target'" in str(caught.value)


def test_definition_missing_quarantine_node_names_validator():
    pipeline = lf.Pipeline("missing_quarantine")
    pipeline.extract(_table, name="source")

    @pipeline.validate(max_rejected_share=0.1, quarantine="no_such_quarantine")
    def checked(source: pa.Table) -> lf.Validation:
        return lf.Validation(valid=source, rejected=source.slice(0, 0))

    with pytest.raises(lf.PipelineDefinitionError) as caught:
        pipeline.check()
    assert caught.value.node == "checked"
    assert "'no_such_quarantine'" in str(caught.value)


def test_definition_rejected_input_needs_validator():
    pipeline = lf.Pipeline("rejected_from_extract")
    pipeline.extract(_table, name="source")

    @pipeline.transform(inputs={"rejected": "source.rejected"})
    def rejects(rejected: pa.Table) -> pa.Table:
        return rejected

    with pytest.raises(lf.PipelineDefinitionError) as caught:
        pipeline.check()
    assert caught.value.node == "rejects"


def test_definition_load_without_target_names_node():
    pipeline = lf.Pipeline("load_without_target")

    with pytest.raises(lf.PipelineDefinitionError) as caught:
        pipeline.load(_table, name="stored")
    assert caught.value.node == "stored"


@pytest.mark.parametrize(
    ("attribute", "node"),
    [
        ("cycle", None),
        ("unknown_dependency", "enriched"),
        ("unknown_partitioned_like", "per_month"),
        ("route_to_missing", "source"),
    ],
)
def test_start_invalid_pipeline_records_nothing(tmp_path, helpers, attribute, node):
    settings = lf.Settings.resolve(home=str(tmp_path / "home"))

    with pytest.raises(lf.PipelineDefinitionError) as caught:
        lf.start_run(helpers.pipeline_locator("invalid.py", attribute), settings=settings)
    if node is not None:
        assert caught.value.node == node
    else:
        assert caught.value.node in ("first", "second")
    assert not os.path.exists(settings.store_path)
    assert not os.path.exists(settings.checkpoints)


def test_start_duplicate_node_file_records_nothing(tmp_path, helpers):
    settings = lf.Settings.resolve(home=str(tmp_path / "home"))

    with pytest.raises(lf.PipelineDefinitionError) as caught:
        lf.start_run(helpers.pipeline_locator("duplicate.py"), settings=settings)
    assert caught.value.node == "rows"
    assert not os.path.exists(settings.store_path)


class ExportParams(BaseModel):
    limit: int = 10
    months: list[int] = [1]
    label: str | None = None
    token: lf.Secret | None = None


def _export_pipeline() -> lf.Pipeline:
    pipeline = lf.Pipeline("export", params=ExportParams)
    pipeline.extract(_table, name="source")
    return pipeline


def test_params_invalid_value_names_parameter():
    with pytest.raises(lf.ParameterError) as caught:
        _export_pipeline().parse_params({"limit": "ten"})
    assert caught.value.parameter == "limit"
    assert "limit" in str(caught.value)
    assert "'ten'" in str(caught.value)


def test_params_unknown_name_lists_known():
    with pytest.raises(lf.ParameterError) as caught:
        _export_pipeline().parse_params({"limt": "5"})
    assert caught.value.parameter == "limt"
    assert "limit" in str(caught.value)


def test_params_invalid_list_item_names_parameter():
    with pytest.raises(lf.ParameterError) as caught:
        _export_pipeline().parse_params({"months": "1,x"})
    assert caught.value.parameter.startswith("months")


def test_params_list_from_comma_text():
    parsed = _export_pipeline().parse_params({"months": "1,2", "limit": "5"})
    assert parsed.months == [1, 2]
    assert parsed.limit == 5


def test_params_list_from_json_text():
    parsed = _export_pipeline().parse_params({"months": "[3, 4]"})
    assert parsed.months == [3, 4]


def test_params_required_missing_names_parameter():
    class Required(BaseModel):
        source_file: str

    pipeline = lf.Pipeline("required", params=Required)
    pipeline.extract(_table, name="source")

    with pytest.raises(lf.ParameterError) as caught:
        pipeline.parse_params({})
    assert caught.value.parameter == "source_file"
    assert "missing" in str(caught.value)


def test_params_secret_recorded_as_reference():
    parsed = _export_pipeline().parse_params({"token": "env:EXPORT_TOKEN"})
    assert parsed.token == lf.Secret(env="EXPORT_TOKEN")
    assert recorded_params(parsed)["token"] == {"env": "EXPORT_TOKEN", "file": None}


def test_params_secret_value_rejected_unechoed():
    with pytest.raises(lf.ParameterError) as caught:
        _export_pipeline().parse_params({"token": "hunter2-plain-value"})
    assert caught.value.parameter == "token"
    assert "env:NAME" in str(caught.value)
    assert "hunter2-plain-value" not in str(caught.value)
