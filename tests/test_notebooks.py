"""Every notebook in colab/ runs top to bottom in a real Jupyter kernel."""

import glob
import os

import pytest

from conftest import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb"))))
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    monkeypatch.setenv("PYTHONPATH", ROOT)
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "validation perplexity" in outputs and "124,439,808" in outputs
