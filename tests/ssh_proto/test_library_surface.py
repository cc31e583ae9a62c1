"""ssh_proto as a library: the README shows the example files as they are, the package's
public names are declared, documented and visible to type checkers, it carries its version
and py.typed, and it imports nothing of the appliance."""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import tomllib
from pathlib import Path

import pytest

import ssh_proto

PACKAGE = Path(ssh_proto.__file__).parent
ROOT = PACKAGE.parent
EXAMPLE_BLOCK = re.compile(r"<!-- example: (examples/\S+) -->\n```python\n(.*?)```\n", re.S)


def _modules() -> list[str]:
    names = ["ssh_proto"]
    for info in pkgutil.walk_packages(ssh_proto.__path__, "ssh_proto."):
        names.append(info.name)
    return names


def test_readme_shows_every_example_file_exactly():
    readme = (PACKAGE / "README.md").read_text()
    shown = {path: text for path, text in EXAMPLE_BLOCK.findall(readme)}
    files = {f"examples/{p.name}" for p in (PACKAGE / "examples").glob("*.py") if p.name != "__init__.py"}
    assert set(shown) == files
    for path, text in shown.items():
        assert text == (PACKAGE / path).read_text(), f"README.md's copy of {path} differs from the file"


def test_readme_has_no_python_block_that_is_not_an_example_file():
    readme = (PACKAGE / "README.md").read_text()
    assert readme.count("```python") == len(EXAMPLE_BLOCK.findall(readme))


def test_examples_import_without_running():
    for name in ("client", "server", "limits", "ca"):
        module = importlib.import_module(f"ssh_proto.examples.{name}")
        assert callable(module.main) and module.__doc__


def test_version_is_the_distributions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert ssh_proto.__version__ == project["version"]
    assert re.fullmatch(r"0\.\d+\.\d+", ssh_proto.__version__)  # 0.x: see the stability promise


def test_py_typed_is_shipped_as_package_data():
    assert (PACKAGE / "py.typed").is_file()
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in setup["package-data"]["ssh_proto"]


def test_every_name_in_all_resolves():
    for name in ssh_proto.__all__:
        assert getattr(ssh_proto, name) is not None


def test_lazily_loaded_names_are_imported_for_type_checkers_too():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
    imported = {(node.module, alias.name) for node in block.body if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert imported == {(module.lstrip("."), name) for name, module in ssh_proto._LAZY.items()}


def _public_callables(module):
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            yield f"{module.__name__}.{name}", obj


def _public_members(cls):
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            yield name, value
            continue
        function = getattr(value, "__func__", value)
        if inspect.isfunction(function):
            yield name, function


@pytest.mark.parametrize("module_name", _modules())
def test_every_public_name_is_documented(module_name):
    module = importlib.import_module(module_name)
    assert module.__doc__, f"{module_name} has no module docstring"
    missing = []
    for qualified, obj in _public_callables(module):
        if not obj.__doc__:
            missing.append(qualified)
        if inspect.isclass(obj) and obj.__module__.startswith("ssh_proto"):
            missing += [f"{qualified}.{name}" for name, f in _public_members(obj) if not f.__doc__]
    assert not missing, f"undocumented public names: {missing}"


def test_ssh_proto_imports_nothing_of_the_appliance():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "appliance"]
    assert not offenders
