"""The example notebook runs top to bottom in a real Jupyter kernel against a real run."""

from __future__ import annotations

import pathlib

import pytest

import ledgerflow as lf

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

PIPELINE = str(pathlib.Path(__file__).parent / "pipelines" / "audited.py")
NOTEBOOK = pathlib.Path(__file__).parents[2] / "examples" / "inspect_run.ipynb"


@pytest.mark.slow
def test_inspect_notebook_runs_against_real_run(settings, tmp_path, monkeypatch):
    result = lf.run(PIPELINE, params={"marker_dir": str(tmp_path)}, run_id="notebook-run", settings=settings)
    assert result.status == "waiting_for_approval"
    lf.decide("notebook-run", reviewer="alice", approve=True, settings=settings)
    assert lf.resume("notebook-run", settings=settings).status == "completed"

    monkeypatch.setenv("LEDGERFLOW_HOME", settings.home)
    monkeypatch.setenv("LEDGERFLOW_RUN_ID", "notebook-run")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    texts = "".join(str(output.get("data", {}).get("text/plain", "")) for output in outputs)
    assert "('running', 'waiting_for_approval')" in texts
