"""The package's shape: layers (lint-imports checks them in `make test`), no
module that imports the package root, no module that shares its name with a
function it holds, one compile cache."""

import ast
import importlib
import pathlib
import pkgutil

import vi_jax

ROOT = pathlib.Path(vi_jax.__file__).parent
SUBPACKAGES = {m.name for m in pkgutil.iter_modules(vi_jax.__path__) if m.ispkg}


def _modules():
  for path in sorted(ROOT.rglob("*.py")):
    yield path, ast.parse(path.read_text(), str(path))


def _imports_root(node) -> bool:
  if isinstance(node, ast.Import):
    return any(a.name == "vi_jax" for a in node.names)
  if isinstance(node, ast.ImportFrom) and node.module == "vi_jax" and node.level == 0:
    return any(a.name not in SUBPACKAGES for a in node.names)
  return False


def test_no_module_imports_the_package_root():
  offenders = [f"{path.relative_to(ROOT.parent)}:{node.lineno}"
               for path, tree in _modules() if path.name != "__init__.py" or path.parent != ROOT
               for node in ast.walk(tree) if _imports_root(node)]
  assert not offenders, f"these import the package root `vi_jax`: {offenders}"


def test_subpackages_are_the_layers_of_the_contract():
  text = (ROOT.parent / "pyproject.toml").read_text()
  for name in SUBPACKAGES:
    assert f'"vi_jax.{name}' in text or f"| vi_jax.{name}" in text, name


def test_no_module_is_shadowed_by_a_function_of_its_package():
  shadowed = []
  for info in pkgutil.walk_packages(vi_jax.__path__, "vi_jax."):
    parent_name, _, leaf = info.name.rpartition(".")
    module = importlib.import_module(info.name)
    if getattr(importlib.import_module(parent_name), leaf, module) is not module:
      shadowed.append(info.name)
  assert not shadowed, shadowed


def test_one_compile_cache():
  users = [str(path.relative_to(ROOT.parent)) for path, tree in _modules()
           for node in ast.walk(tree)
           if isinstance(node, ast.Attribute) and node.attr == "lru_cache"
           or isinstance(node, ast.Name) and node.id == "lru_cache"]
  assert not users, f"lru_cache outside vi_jax._src.compile_cache: {users}"


def _cycles(graph, modules) -> list:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(m):
    index[m] = low[m] = len(index)
    stack.append(m)
    on_stack.add(m)
    for n in graph.find_modules_directly_imported_by(m) & modules:
      if n not in index:
        visit(n)
        low[m] = min(low[m], low[n])
      elif n in on_stack:
        low[m] = min(low[m], index[n])
    if low[m] == index[m]:
      component = set()
      while True:
        n = stack.pop()
        on_stack.discard(n)
        component.add(n)
        if n == m:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for m in sorted(modules):
    if m not in index:
      visit(m)
  return found


def test_no_import_cycle_in_vi_jax_or_benchmarks():
  grimp = __import__("grimp")  # import-linter's import graph
  graph = grimp.build_graph("vi_jax", "benchmarks")
  packages = {m for m in graph.modules
              if m in ("vi_jax", "benchmarks") or (ROOT / m.split(".", 1)[-1].replace(
                  ".", "/") / "__init__.py").exists()}
  # A package's __init__ re-exports its modules; a cycle through it is not one.
  modules = set(graph.modules) - packages
  assert not _cycles(graph, modules)
