"""The pipeline's order of packages holds: every import in hagg_tf/ goes down, never up.

Order (house rule): model → stem → data → networks → training → estimation → export →
evaluation → cli. A module of one package may import its own package and the packages before
it; imports inside functions count as well (a lazy import is still a dependency). The modules at
the top of the tree (``hagg_tf/__init__.py``, the public alias ``models.py``) may import any
package; ``tensorflow_import.py`` and ``jsonsafe.py`` sit below all of them and import nothing
of hagg_tf.
"""
import ast
import pathlib

import hagg_tf

#: The packages of hagg_tf/ in pipeline order.
PIPELINE_ORDER = ("model", "stem", "data", "networks", "training", "estimation", "export",
                  "evaluation", "cli")
#: Top-level modules outside the order, by what they may import.
FACADES = ("__init__", "models")
BELOW_ALL = ("tensorflow_import", "jsonsafe")

PACKAGE_ROOT = pathlib.Path(hagg_tf.__file__).resolve().parent


def _rank(top: str):
    """Position of a first-level name of hagg_tf in the order; -1 below all; None: a facade."""
    if top in PIPELINE_ORDER:
        return PIPELINE_ORDER.index(top)
    if top in BELOW_ALL:
        return -1
    return None


def _imported_modules(path: pathlib.Path, root: pathlib.Path):
    """(line, dotted module) of every hagg_tf import in a file, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ["hagg_tf", *path.relative_to(root).parent.parts]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield node.lineno, module
            if module == "hagg_tf":
                # ``from hagg_tf import networks`` imports the package hagg_tf.networks.
                for alias in node.names:
                    yield node.lineno, f"hagg_tf.{alias.name}"


def upward_imports(root: pathlib.Path = PACKAGE_ROOT) -> list[str]:
    """Every import of a later package by an earlier one, as ``file:line: a → b`` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        top = relative.parts[0].removesuffix(".py")
        own = _rank(top)
        if own is None:
            continue  # a facade may import anything
        for line, module in _imported_modules(path, root):
            parts = module.split(".")
            if parts[0] != "hagg_tf" or len(parts) < 2:
                continue
            target = _rank(parts[1])
            if target is None or target > own:
                found.append(f"{relative}:{line}: {top} imports {module}")
    return found


def test_no_module_imports_a_later_stage_of_the_pipeline():
    violations = upward_imports()
    assert not violations, "imports against the pipeline order:\n" + "\n".join(violations)


def test_the_walk_sees_an_upward_import(tmp_path):
    # The check itself can fail: a data module importing networks is caught, lazily or not.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bad.py").write_text(
        "import numpy\nfrom hagg_tf.model import io\n"
        "def f():\n    from hagg_tf import networks\n    from ..training import trainer\n")
    (tmp_path / "data" / "__init__.py").write_text("")
    assert upward_imports(tmp_path) == [
        "data/bad.py:4: data imports hagg_tf.networks",
        "data/bad.py:5: data imports hagg_tf.training"]
