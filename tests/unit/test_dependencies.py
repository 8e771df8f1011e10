"""Every module of the package imports, every package folder is installed, and every third-party module the
package imports comes from a distribution that ``setup.cfg`` declares in ``install_requires`` itself (not one
that only happens to arrive with nnU-Net or with the test extras)."""
import ast
import configparser
import importlib
import importlib.metadata
import os
import pkgutil
import re
import sys

from helpers.processes import REPO

# imported under ``try/except ImportError`` with a fallback (the modules that need it): not required
OPTIONAL = {"triton": ("nnunetv2_deconver.ops.ndc_triton_kernels",)}
SOURCE_FOLDERS = {"nnunetv2_deconver": os.path.join(REPO, "nnunetv2_deconver"),
                  "nnunetv2_deconver.trainers": os.path.join(REPO, "trainers"),
                  "nnunetv2_deconver.plans_overrides": os.path.join(REPO, "plans_overrides")}


def _setup_cfg():
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "setup.cfg"))
    return config


def _lines(value):
    return [line.split("#")[0].strip() for line in value.splitlines() if line.split("#")[0].strip()]


def _normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared():
    return {_normalise(re.split(r"[<>=!~;\[ ]", requirement)[0])
            for requirement in _lines(_setup_cfg()["options"]["install_requires"])}


def _module_names():
    """Every module and package of the installed package, by walking it (trainers/ installs under it)."""
    names = []
    for package in ("nnunetv2_deconver", "nnunetv2_deconver.trainers"):
        module = importlib.import_module(package)
        names.append(package)
        names += [info.name for info in pkgutil.walk_packages(module.__path__, package + ".")]
    return sorted(set(names))


def _source_files():
    for package, folder in SOURCE_FOLDERS.items():
        for root, _, files in os.walk(folder):
            for name in files:
                if name.endswith(".py"):
                    relative = os.path.relpath(os.path.join(root, name[:-3]), folder).replace(os.sep, ".")
                    yield package + ("" if relative == "__init__" else "." + relative.removesuffix(".__init__")), \
                        os.path.join(root, name)


def test_every_module_imports():
    names = _module_names()
    assert "nnunetv2_deconver.tools.compare.publish" in names and \
        "nnunetv2_deconver.trainers.variants.testing.nnUNetTrainer_smoke" in names  # the walk sees both trees
    assert {name for name, _ in _source_files()} - set(names) <= {"nnunetv2_deconver.plans_overrides"}
    for name in names:
        optional = [dist for dist, modules in OPTIONAL.items() if name in modules]
        if optional and importlib.util.find_spec(optional[0]) is None:
            continue
        importlib.import_module(name)


def test_every_package_folder_is_installed():
    listed = set(_lines(_setup_cfg()["options"]["packages"]))
    packages = {name for name, path in _source_files() if path.endswith("__init__.py")} | \
        {"nnunetv2_deconver.plans_overrides"}
    assert packages - listed == set(), "package folders that a regular install would leave out"


def test_every_imported_distribution_is_declared():
    own = set(SOURCE_FOLDERS) | {"nnunetv2_deconver"}
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    for name, path in _source_files():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top in own or top in OPTIONAL:
                    continue
                dists = {_normalise(d) for d in distributions.get(top, [top])}
                if not dists & _declared():
                    undeclared.setdefault(top, set()).add(name)
    assert undeclared == {}, f"imported but not in setup.cfg install_requires: {undeclared}"

