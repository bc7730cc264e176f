"""Finding pipelines: by file path or ``module:attribute``, and back from an object to its locator."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from types import ModuleType

from ledgerflow.actors._errors import PipelineDefinitionError, PipelineImportError
from ledgerflow.actors._pipeline import Pipeline

DEFAULT_ATTRIBUTE = "pipeline"


def _split(locator: str) -> tuple[str, str]:
    target, colon, attribute = locator.rpartition(":")
    if colon and target and attribute.isidentifier():
        return target, attribute
    return locator, DEFAULT_ATTRIBUTE


def _import_file(path: str, locator: str) -> ModuleType:
    import ray.cloudpickle

    absolute = os.path.abspath(path)
    if not os.path.isfile(absolute):
        raise PipelineImportError(f"pipeline file {path} not found: pass an existing .py file or module:attribute",
                                  locator=locator)
    name = "ledgerflow_pipeline_" + hashlib.sha256(absolute.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, absolute)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except PipelineDefinitionError:
        # A decorator found the error (a duplicate node name) and already names the node.
        sys.modules.pop(name, None)
        raise
    except Exception as err:
        sys.modules.pop(name, None)
        raise PipelineImportError(
            f"pipeline file {path} failed to import: {type(err).__name__}: {err}", locator=locator
        ) from err
    # Ray workers cannot import a module loaded from a file, so its code travels by value.
    ray.cloudpickle.register_pickle_by_value(module)
    return module


def load_pipeline(locator: str) -> Pipeline:
    """Import the pipeline named by ``locator``: ``path/file.py[:attr]`` or ``module:attr``.

    Raises:
        PipelineImportError: The file or module does not import, or the attribute is no Pipeline.
    """
    target, attribute = _split(locator)
    if target.endswith(".py") or os.sep in target:
        module = _import_file(target, locator)
    else:
        try:
            module = importlib.import_module(target)
        except Exception as err:
            raise PipelineImportError(
                f"pipeline module {target!r} failed to import: {type(err).__name__}: {err}", locator=locator
            ) from err
    pipeline = getattr(module, attribute, None)
    if not isinstance(pipeline, Pipeline):
        found = [name for name, value in vars(module).items() if isinstance(value, Pipeline)]
        hint = f"; it defines {', '.join(found)}" if found else ""
        raise PipelineImportError(
            f"{target} has no Pipeline named {attribute!r}{hint}: pass {target}:NAME", locator=locator
        )
    pipeline.check()
    return pipeline


def canonical_locator(locator: str) -> str:
    """Return the locator with an absolute file path, as recorded at start."""
    target, attribute = _split(locator)
    if target.endswith(".py") or os.sep in target:
        return f"{os.path.abspath(target)}:{attribute}"
    return f"{target}:{attribute}"


def locator_of(pipeline: Pipeline) -> str:
    """Find the locator of a Pipeline object from the module that defines it.

    Raises:
        PipelineImportError: The pipeline is not a module-level attribute of an importable module or file.
    """
    for name, module in list(sys.modules.items()):
        if module is None:
            continue
        for attribute, value in list(vars(module).items()):
            if value is pipeline:
                path = getattr(module, "__file__", None)
                if name.startswith("ledgerflow_pipeline_") or name == "__main__" or not _importable(name):
                    if path:
                        return f"{os.path.abspath(path)}:{attribute}"
                    continue
                return f"{name}:{attribute}"
    raise PipelineImportError(
        f"cannot find where pipeline {pipeline.name!r} is defined: define it at module level in a .py file "
        "and run it by locator (path/file.py:NAME or module:NAME)",
        locator=pipeline.name,
    )


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
