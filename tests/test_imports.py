"""Every module of the package imports (an import error anywhere fails here, whatever the other tests use)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import mixedae

MODULES = sorted(m.name for m in pkgutil.walk_packages(mixedae.__path__, prefix="mixedae.")
                 if not m.name.endswith(".__main__"))  # (that one runs the command line)


def test_the_package_has_its_modules():
    assert {"mixedae.cli", "mixedae.engine.pretrain", "mixedae.export.weights", "mixedae.viz.report"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)
