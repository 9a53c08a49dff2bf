"""Every notebook in colabs/ runs top to bottom (fast setting, OPTZOO_FAST=1).

Also checks the notebooks are stored without outputs, carry a Colab badge and
an install cell, and match their generator (colabs/_make_notebooks.py).
"""
import glob
import os
import sys

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLABS = os.path.join(ROOT, "colabs")
NOTEBOOKS = sorted(glob.glob(os.path.join(COLABS, "*.ipynb")))
IDS = [os.path.basename(p) for p in NOTEBOOKS]


def test_there_are_notebooks_for_every_topic():
  assert len(NOTEBOOKS) >= 9, IDS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_format(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  name = os.path.basename(path)
  first = nb.cells[0].source
  assert f"colab.research.google.com/github/optzoo/optzoo/blob/main/colabs/{name}" in first
  assert "What this shows" in first
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert "%pip install" in code[0].source and "find_spec(\"optzoo\")" in code[0].source
  assert "OPTZOO_FAST" in code[1].source
  for c in code:
    assert not c.get("outputs") and c.get("execution_count") is None, "stored with outputs"
  assert any("plt.show()" in c.source or "savefig" in c.source for c in code), "no figure"


def test_notebooks_match_generator(tmp_path, monkeypatch):
  sys.path.insert(0, COLABS)
  try:
    import _make_notebooks as gen  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(COLABS)
  for name, (title, shows, fn) in gen.NOTEBOOKS.items():
    fresh = gen.build(name, title, shows, fn())
    stored = nbformat.read(os.path.join(COLABS, name), as_version=4)
    assert [c.source for c in fresh.cells] == [c.source for c in stored.cells], (
        f"{name} is stale: run python colabs/_make_notebooks.py")
  assert sorted(gen.NOTEBOOKS) == IDS


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs(path, tmp_path):
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top

  nb = nbformat.read(path, as_version=4)
  # headless inline backend (Agg underneath) so that figures land in the outputs
  env = {"OPTZOO_FAST": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline",
         "JAX_PLATFORMS": "cpu",
         "PYTHONHASHSEED": "0"}
  old = {k: os.environ.get(k) for k in list(env) + ["XLA_FLAGS"]}
  os.environ.update(env)
  os.environ.pop("XLA_FLAGS", None)  # one CPU device, as in Colab
  try:
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "image/png" in o.get("data", {}))
  assert images >= 1, "the notebook drew no figure"
