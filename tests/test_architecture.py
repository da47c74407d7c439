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
