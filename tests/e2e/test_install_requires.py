"""The package imports with only what ``setup.cfg``'s ``install_requires`` brings: a site folder is built of
links to the installed files of those distributions and of their own requirements, recursively (not of the
test extras pytest, hypothesis, monai), and a fresh interpreter without the environment's site-packages
imports every module of the package from it. The same test of the declarations as installing a new
environment from ``install_requires``, without downloading and installing torch and nnU-Net (minutes)."""
import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import sysconfig
import textwrap

from packaging.requirements import Requirement

from helpers.processes import REPO

PROBE = textwrap.dedent('''
    import importlib, importlib.util, pkgutil, site, sys
    site.addsitedir(sys.argv[1])  # its .pth files too: the editable install's finder
    for hidden in ("pytest", "hypothesis", "monai"):
        assert importlib.util.find_spec(hidden) is None, hidden + " must not be importable here"
    count = 0
    # trainers/ and plans_overrides/ install under the package from folders of their own: walked apart
    for package in ("nnunetv2_deconver", "nnunetv2_deconver.trainers", "nnunetv2_deconver.plans_overrides"):
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            if info.name.endswith("ndc_triton_kernels") and importlib.util.find_spec("triton") is None:
                continue  # optional: imported under try/except ImportError
            importlib.import_module(info.name)
            count += 1
    print(f"imported {count} modules with only install_requires")
''')


# the environment's own site-packages: a checkout on sys.path (pytest's) holds an egg-info of this package too
SITE_PACKAGES = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})


def _distribution(name):
    return next(iter(metadata.distributions(name=name, path=SITE_PACKAGES)))


def _normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _install_requires():
    import configparser
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "setup.cfg"))
    lines = [line.split("#")[0].strip() for line in config["options"]["install_requires"].splitlines()]
    return [Requirement(line).name for line in lines if line]


def _closure(names):
    """The distributions ``names`` and everything they require (markers evaluated, no extras)."""
    closure, todo = set(), list(names)
    while todo:
        name = _normalise(todo.pop())
        if name in closure:
            continue
        closure.add(name)
        for requirement in map(Requirement, _distribution(name).requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return closure


def _site_folder(folder, distributions):
    """Links in ``folder`` to the top-level files and folders of the installed ``distributions``."""
    os.makedirs(folder)
    for name in sorted(distributions):
        distribution = _distribution(name)
        base = str(distribution.locate_file(""))
        for top in {str(path).split("/")[0] for path in distribution.files or []}:
            source, target = os.path.join(base, top), os.path.join(folder, top)
            if top not in ("..", "") and os.path.exists(source) and not os.path.lexists(target):
                os.symlink(source, target)
    # an editable install of this package: its .pth and finder, which its metadata does not list
    site_packages = str(_distribution("nnunetv2-deconver").locate_file(""))
    for entry in os.listdir(site_packages):
        if entry.startswith("__editable__") and "nnunetv2_deconver" in entry and \
                not os.path.lexists(os.path.join(folder, entry)):
            os.symlink(os.path.join(site_packages, entry), os.path.join(folder, entry))


def test_every_module_imports_with_install_requires_alone(tmp_path):
    site_folder = str(tmp_path / "site-packages")
    _site_folder(site_folder, _closure(_install_requires() + ["nnunetv2-deconver"]))
    assert not os.path.exists(os.path.join(site_folder, "pytest"))
    # -S: without the environment's site-packages; -E: without PYTHONPATH
    done = subprocess.run([sys.executable, "-S", "-E", "-c", PROBE, site_folder], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "imported" in done.stdout
