"""Loading a user's app, ``module:attribute``, for the command lines."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from .errors import ConfigurationError
from .flow import Flow

__all__ = ["load_app"]


def load_app(spec: str) -> Flow[Any, Any, Any]:
    """The Flow named by ``module:attribute`` (calling it when it is a factory)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"APP must look like module:attribute, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(f"{module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(target, Flow) and callable(target):
        try:
            target = target()
        except Exception as exc:
            raise ConfigurationError(
                f"{spec} is not a Flow, and calling it as a factory failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(target, Flow):
        raise ConfigurationError(
            f"{spec} is a {type(target).__name__}, not a Flow or a function returning one"
        )
    return target
