"""The package's layering: each subpackage imports only from the layers below it, and modules and functions
stay small."""
import ast
import os

import pytest

from helpers.processes import REPO

PACKAGE = os.path.join(REPO, "nnunetv2_deconver")
# layer -> what it must not import (absolute module prefixes)
FORBIDDEN = {
    "ops": ("nnunetv2_deconver.network", "nnunetv2_deconver.nnunet", "nnunetv2_deconver.tools",
            "nnunetv2_deconver.trainers", "nnunetv2", "dynamic_network_architectures"),
    "network": ("nnunetv2_deconver.nnunet", "nnunetv2_deconver.tools", "nnunetv2_deconver.trainers", "nnunetv2",
                "dynamic_network_architectures"),
    "nnunet": ("nnunetv2_deconver.tools", "nnunetv2_deconver.trainers"),
    "tools": ("nnunetv2_deconver.trainers",),
}
MAX_LINES = 400
MAX_FUNCTION_LINES = 60
SHORT_FUNCTION_FOLDERS = (PACKAGE, os.path.join(REPO, "trainers"))


def _modules(folder):
    for root, _, files in os.walk(folder):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(root, name)


def _imports(path):
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):  # function-level imports count too: a lazy import is still a dependency
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_each_layer_imports_only_downward(layer):
    offending = []
    for path in _modules(os.path.join(PACKAGE, layer)):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer]):
                offending.append(f"{os.path.relpath(path, REPO)} imports {name}")
    assert not offending, "\n".join(offending)


def test_the_layers_above_ops_use_its_interface_only():
    """``nnunetv2_deconver.ops`` exports what the other layers use; its modules are its own."""
    ops = os.path.join(PACKAGE, "ops")
    own_modules = {f"nnunetv2_deconver.ops.{name[:-3]}" for name in os.listdir(ops) if name.endswith(".py")}
    offending = [f"{os.path.relpath(path, REPO)} imports {name}"
                 for folder in (PACKAGE, os.path.join(REPO, "trainers")) for path in _modules(folder)
                 if not path.startswith(ops + os.sep) for name in _imports(path)
                 if any(name == m or name.startswith(m + ".") for m in own_modules)]
    assert not offending, "\n".join(offending)


def test_no_module_over_the_size_limit():
    too_long = []
    for folder in (PACKAGE, os.path.join(REPO, "trainers")):
        for path in _modules(folder):
            with open(path) as f:
                lines = sum(1 for _ in f)
            if lines > MAX_LINES:
                too_long.append(f"{os.path.relpath(path, REPO)}: {lines} lines")
    assert not too_long, "\n".join(too_long)


def test_no_function_over_the_size_limit():
    too_long = [f"{os.path.relpath(path, REPO)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
                for folder in SHORT_FUNCTION_FOLDERS for path in _modules(folder)
                for node in ast.walk(ast.parse(open(path).read()))
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not too_long, "\n".join(too_long)


def test_user_input_is_not_validated_with_assert():
    """``python -O`` strips asserts: the package validates with exceptions."""
    found = [f"{os.path.relpath(path, REPO)}:{node.lineno}"
             for folder in (PACKAGE, os.path.join(REPO, "trainers")) for path in _modules(folder)
             for node in ast.walk(ast.parse(open(path).read())) if isinstance(node, ast.Assert)]
    assert not found, "assert statements: " + ", ".join(found)
