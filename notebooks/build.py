"""Builds and executes the notebooks from their percent-format sources.

    python -m notebooks.build            # all notebooks, full steps, outputs saved
    python -m notebooks.build 01 03      # only those whose name starts with 01 / 03
    python -m notebooks.build --fast     # reduced steps, executed in a temp dir, not saved

Sources are `notebooks/src/NN_name.py` with `# %%` code cells and
`# %% [markdown]` cells (the percent format of Jupytext/VS Code). Each
notebook reads `VI_JAX_NOTEBOOK_FAST=1` to run a reduced number of steps and
ends with a cell that asserts its result is right.
"""

import argparse
import os
import pathlib
import shutil
import sys
import tempfile

import nbformat
from nbclient import NotebookClient

HERE = pathlib.Path(__file__).resolve().parent
SRC = HERE / "src"


def to_notebook(source: str) -> nbformat.NotebookNode:
  """Splits a percent-format script into notebook cells."""
  nb = nbformat.v4.new_notebook()
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                               "language": "python"}
  cells, kind, lines = [], None, []

  def flush():
    text = "\n".join(lines).strip("\n")
    if kind == "markdown":
      text = "\n".join(l[2:] if l.startswith("# ") else l.lstrip("#")
                       for l in text.splitlines())
      cells.append(nbformat.v4.new_markdown_cell(text))
    elif kind == "code" and text:
      cells.append(nbformat.v4.new_code_cell(text))

  for line in source.splitlines():
    if line.startswith("# %%"):
      flush()
      kind, lines = ("markdown" if "[markdown]" in line else "code"), []
    elif kind is not None:
      lines.append(line)
  flush()
  nb.cells = cells
  return nb


def execute(nb: nbformat.NotebookNode, workdir: pathlib.Path, fast: bool,
            timeout: int = 900) -> nbformat.NotebookNode:
  """Runs every cell in `workdir`; raises CellExecutionError on a failing cell."""
  env_before = os.environ.get("VI_JAX_NOTEBOOK_FAST")
  os.environ["VI_JAX_NOTEBOOK_FAST"] = "1" if fast else "0"
  os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  root = str(HERE.parent)
  os.environ["PYTHONPATH"] = root + os.pathsep + os.environ.get("PYTHONPATH", "")
  try:
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()
  finally:
    if env_before is None:
      os.environ.pop("VI_JAX_NOTEBOOK_FAST", None)
    else:
      os.environ["VI_JAX_NOTEBOOK_FAST"] = env_before
  return nb


def sources(prefixes=()):
  out = sorted(SRC.glob("[0-9][0-9]_*.py"))
  if prefixes:
    out = [p for p in out if any(p.name.startswith(x) for x in prefixes)]
  return out


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("names", nargs="*")
  parser.add_argument("--fast", action="store_true")
  args = parser.parse_args(argv)
  for src in sources(args.names):
    nb = to_notebook(src.read_text())
    print(f"executing {src.stem} ({'fast' if args.fast else 'full'})",
          flush=True)
    if args.fast:
      with tempfile.TemporaryDirectory() as tmp:
        execute(nb, pathlib.Path(tmp), fast=True)
    else:
      execute(nb, HERE, fast=False)
      nbformat.write(nb, HERE / f"{src.stem}.ipynb")
  return 0


if __name__ == "__main__":
  sys.exit(main())
