"""The isolated extraction child: ``python -P .../masscer/lib/extract/__main__.py --path=...``
(built by ``isolation._child_command``); prints the result as JSON on stdout.

Run by file path, this script has no parent package. It loads this folder by file path as the
package ``_masscer_extract``, so the modules' relative imports work without importing
``masscer``, whose __init__ loads Celery and Django settings. ``python -m masscer.lib.extract``
runs the same child, only slower.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

_PRIVATE_NAME = "_masscer_extract"


def _package() -> ModuleType:
    """This package: the real one under ``-m``, else loaded by file path under a private name."""
    if __package__:
        return importlib.import_module(__package__)
    folder = os.path.dirname(os.path.abspath(__file__))
    # Without -P this folder is sys.path[0], where docx.py and html.py would shadow python-docx
    # and the standard library's html.
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != folder]
    spec = importlib.util.spec_from_file_location(
        _PRIVATE_NAME, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules[_PRIVATE_NAME] = package
    spec.loader.exec_module(package)
    return package


if __name__ == "__main__":
    child = importlib.import_module(f"{_package().__name__}.child")
    sys.exit(child.child_main(sys.argv[1:]))
