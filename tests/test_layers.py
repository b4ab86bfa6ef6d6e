"""The package's layer order: every import, function-level ones included, points down.

A module may import from its own layer's package (``ncfm_jax.data.*`` inside
``data``) or from a lower layer; nothing imports upwards, so no circle can hide
behind a lazy import. ``ncfm_jax/__init__.py`` is the public facade above
everything and is not checked.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "ncfm_jax"

# Lowest first. A module's layer is that of its longest listed prefix.
LAYERS = [
    ["errors", "progress", "distributed", "allocator", "sincos", "preemption"],
    ["config_lib"],
    ["data"],
    ["models"],
    ["ncfd", "sampler", "augment", "parameterize", "sharding"],
    ["execution"],
    ["distill"],
    ["train"],
    ["plan"],
    ["workdir", "checkpoints"],
    ["evaluation"],
    ["paper"],
    ["estimate"],
    ["pipeline"],
    ["main"],
    ["grid"],
    ["__main__", "study", "reproduce", "bench", "configs"],
]


def _name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE).with_suffix("").parts
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _layer(module: str) -> tuple[int, str]:
  """(layer index, the listed name that decides it) of a module inside ncfm_jax."""
  top = module.split(".")[0]
  for index, names in enumerate(LAYERS):
    if top in names:
      return index, top
  raise AssertionError(f"ncfm_jax.{module} is in no layer of tests/test_layers.py")


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line, module inside ncfm_jax) of every import in the file, at any depth."""
  found = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from ncfm_jax import x` imports the submodule x (or a name of the package).
      names = ([f"{node.module}.{alias.name}" for alias in node.names]
               if node.module == "ncfm_jax" else [node.module])
    else:
      continue
    found += [(node.lineno, name[len("ncfm_jax."):]) for name in names
              if name.startswith("ncfm_jax.")]
  return found


def _modules():
  return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_every_module_has_a_layer():
  for path in _modules():
    _layer(_name(path))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: _name(p) or "ncfm_jax")
def test_imports_point_down(path):
  name = _name(path)
  own_layer, own_top = _layer(name)
  for line, target in _imports(path):
    layer, top = _layer(target)
    assert layer < own_layer or top == own_top, (
        f"ncfm_jax/{path.relative_to(PACKAGE)}:{line} imports ncfm_jax.{target} "
        f"(layer {layer}) from layer {own_layer}")


def test_the_ncfd_module_is_imported_by_its_path():
  # `ncfm_jax.ncfd` is the function (re-exported); the module is `ncfm_jax.ncfd`'s
  # entry in sys.modules, reached only by `from ncfm_jax.ncfd import ...`.
  for path in [*_modules(), *PACKAGE.parent.joinpath("tests").glob("*.py")]:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module == "ncfm_jax":
        assert "ncfd" not in [a.name for a in node.names], f"{path}:{node.lineno}"
      if isinstance(node, ast.Import):
        assert "ncfm_jax.ncfd" not in [a.name for a in node.names], f"{path}:{node.lineno}"
