"""Pipeline fingerprints are stable across imports and change with the code."""

from __future__ import annotations

import sys
import textwrap

from ledgerflow.actors._loader import load_pipeline

SOURCE = textwrap.dedent("""
    import pyarrow as pa
    import ledgerflow as lf

    pipeline = lf.Pipeline("fingerprinted")

    @pipeline.extract
    def numbers() -> pa.Table:
        return pa.table({"x": [1]})

    @pipeline.load(target=lf.SqliteTable("numbers", database=lambda params: None))
    def warehouse(numbers: pa.Table) -> pa.Table:
        return numbers
""")


def _fresh_fingerprint(path: str) -> str:
    for name in [name for name in sys.modules if name.startswith("ledgerflow_pipeline_")]:
        del sys.modules[name]
    return load_pipeline(path).fingerprints()[0]


def test_fingerprint_stable_with_callable_target(tmp_path):
    path = tmp_path / "pipeline.py"
    path.write_text(SOURCE)
    assert _fresh_fingerprint(str(path)) == _fresh_fingerprint(str(path))


def test_fingerprint_changes_with_node_source(tmp_path):
    path = tmp_path / "pipeline.py"
    path.write_text(SOURCE)
    before = _fresh_fingerprint(str(path))
    path.write_text(SOURCE.replace('{"x": [1]}', '{"x": [2]}'))
    assert _fresh_fingerprint(str(path)) != before
