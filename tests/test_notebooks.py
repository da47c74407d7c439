"""Executes every saved notebook headless in its reduced-steps mode.

A notebook fails the test if any cell raises, including its final check cell.
"""

import pathlib
import tempfile

import nbformat
import pytest

from notebooks import build

NOTEBOOKS = sorted(pathlib.Path(build.HERE).glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_and_its_check_passes(path):
  nb = nbformat.read(path, as_version=4)
  assert nb.cells[-1].cell_type == "code" and "assert" in nb.cells[-1].source, (
      "each notebook must end with a check cell")
  with tempfile.TemporaryDirectory() as tmp:
    build.execute(nb, pathlib.Path(tmp), fast=True)


def test_every_source_has_a_saved_executed_notebook():
  for src in build.sources():
    saved = pathlib.Path(build.HERE) / f"{src.stem}.ipynb"
    assert saved.exists(), f"{saved.name} missing: run python -m notebooks.build"
    nb = nbformat.read(saved, as_version=4)
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        f"{saved.name} has no saved outputs")
