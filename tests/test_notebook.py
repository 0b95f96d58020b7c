"""docs/notebooks/quickstart.ipynb runs top to bottom (tiny model, synthetic data), so it never
goes stale."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_notebook_runs(tmp_path, tiny_bert):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(ROOT / "docs" / "notebooks" / "quickstart.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source += (f"\nMODEL = {str(tiny_bert)!r}\nEPOCHS = 1\nUSERS = 120\n"
                      f"OUT = {str(tmp_path / 'nb')!r}")
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert (tmp_path / "nb" / "methods.png").is_file()
    assert (tmp_path / "nb" / "houlsby" / "metrics.json").is_file()
