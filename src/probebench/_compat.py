"""Package faces and the old module paths.

A subpackage's `__init__` names the modules that make up its public face; a name is imported
from them on first use (PEP 562), so importing one submodule never drags in its siblings
(matplotlib for the report, torch for the models). Module paths that moved in the 0.2 layout
still import, as the module that replaced them, with a `DeprecationWarning` that names the new
path; they go in the release after.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     from probebench.tasks import hash_split
    >>> hash_split.__module__, caught[0].category.__name__
    ('probebench.prompts.splits', 'DeprecationWarning')
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Callable

# old module -> the module (or package face) that now holds its names
MOVED = {
    "probebench.tasks": "probebench.prompts",
    "probebench.extract": "probebench.models.extract",
    "probebench.ablate": "probebench.models.ablate",
    "probebench.families": "probebench.params.zoo",
    "probebench.probe_import": "probebench.probes.foreign",
    "probebench.directions": "probebench.transfer.plan",
    "probebench.matrix": "probebench.cells",
    "probebench.spread": "probebench.cells.spread",
    "probebench.emit": "probebench.leaderboard.entries",
    "probebench.sitefile": "probebench.leaderboard.sitefile",
    "probebench.audit": "probebench.crosscoder.audit",
    "probebench.audit_controls": "probebench.crosscoder.controls",
    "probebench.io": "probebench.artifacts.io",
    "probebench.store": "probebench.artifacts.store",
    "probebench.pinned": "probebench.artifacts.pinned",
    "probebench.environment": "probebench.artifacts.environment",
    "probebench.repro": "probebench.artifacts.verify",
    "probebench.checks": "probebench.errors",
    "probebench.preflight": "probebench.cli.preflight",
    "probebench.cli_zoo": "probebench.cli.zoo",
    "probebench.cli_leaderboard": "probebench.cli.leaderboard",
}


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside the import machinery (the user's import line)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (frame.f_code.co_filename.startswith("<frozen importlib")
                                 or frame.f_code.co_filename == __file__):
        frame, level = frame.f_back, level + 1
    return level


class _MovedLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.new}; import it from there "
                      "(the old path is removed in the next release)", DeprecationWarning,
                      stacklevel=_caller_stacklevel())
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """The module is the already-imported new one: nothing to run."""


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves an old module path to the module that replaced it (see `MOVED`)."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        return None if new is None else importlib.util.spec_from_loader(fullname, _MovedLoader(new))


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())


def lazy_face(package: str, modules: tuple[str, ...]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for a package whose public names live in `modules` (relative
    names, searched in order; the first that defines the name wins)."""

    def __getattr__(name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        for mod in modules:
            module = importlib.import_module(f"{package}.{mod}")
            if hasattr(module, name):
                value = getattr(module, name)
                setattr(sys.modules[package], name, value)
                return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(modules) | {n for mod in modules for n in dir(importlib.import_module(f"{package}.{mod}"))
                                      if not n.startswith("_")})

    return __getattr__, __dir__
