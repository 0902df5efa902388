"""Loading a user's app for the command lines: ``module:attribute`` or
``path/to/file.py:attribute``; and what both command lines share (``VERSION``, the help of
APP, ``shown``: data made safe to print on a terminal).

Every way it can go wrong is a ``AppLoadError`` (a ``ConfigurationError``), whose
message says what to do; an exception raised by the user's own code carries the user's
traceback, without importlib's and procflow's frames.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from .client.flow import Flow
from .errors import ConfigurationError
from .settings import REDIS_URL_ENV, RedisSettings
from .version import __version__

__all__ = [
    "APP_FORMS",
    "APP_HELP",
    "VERSION",
    "AppLoadError",
    "load_app",
    "report_retried",
    "shown",
    "unreachable_hint",
    "user_traceback",
]

#: how the error messages spell what APP may be
APP_FORMS = "module:attribute or path/to/file.py:attribute"

#: the help of APP, for both command lines
APP_HELP = f"{APP_FORMS} naming a Flow (or a function returning one)"

#: what ``--version`` prints, for both command lines
VERSION = f"procflow {__version__}"


#: what a terminal would act on rather than show: the C0 controls, DEL, the C1 controls
#: (U+009B is CSI on terminals that take 8-bit controls) and the bidirectional overrides and
#: isolates that reorder what follows them
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROLS_BUT_NEWLINE = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _json_escaped(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def shown(value: object, lines: bool = False, in_json: bool = False) -> str:
    """``value`` as text that is safe to print on a terminal: every control character
    written as its escape (ESC as ``\\x1b``, a bidi override as ``\\u202e``), so data from
    Redis is seen, never acted on. ``lines`` keeps newlines (for messages of several lines);
    otherwise a newline is shown as ``\\x0a`` too. ``in_json``: ``value`` is JSON text, and
    its escapes are JSON's (``\\u009b``). Markup is the printer's business: text given to
    rich goes in a ``rich.text.Text`` (or a console with ``markup=False``)."""
    text = value if isinstance(value, str) else str(value)
    pattern = _CONTROLS_BUT_NEWLINE if lines else _CONTROLS
    return pattern.sub(_json_escaped if in_json else _escaped, text)


def unreachable_hint(demo: bool = False) -> str:
    """What to do when Redis cannot be reached (a line to print after the error)."""
    embedded = ", or omit both for the embedded server" if demo else ""
    return f"  start a Redis server there, pass --redis-url URL, or set ${REDIS_URL_ENV}{embedded}"


#: frames of these directories are procflow's and importlib's, not the user's
_NOT_USER_DIRS = tuple(
    {
        os.path.dirname(os.path.abspath(path)) + os.sep
        for module_file in (__file__, importlib.__file__)
        for path in (module_file, os.path.realpath(module_file))
    }
)


class AppLoadError(ConfigurationError):
    """APP names no Flow: a bad spelling, a module that cannot be imported, a module or
    factory that raised, an attribute that is missing or is no Flow (or factory of one)."""


def _own_frame(filename: str) -> bool:
    """importlib's frames (frozen or not) and procflow's own: not the user's business."""
    return filename.startswith(("<frozen", *_NOT_USER_DIRS))


def _trim(tbe: traceback.TracebackException) -> None:
    kept = [frame for frame in tbe.stack if not _own_frame(frame.filename)]
    tbe.stack = traceback.StackSummary.from_list(kept)
    for chained in (tbe.__cause__, tbe.__context__):
        if chained is not None:
            _trim(chained)


def user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` as Python prints it, with only the user's frames."""
    tbe = traceback.TracebackException.from_exception(exc)
    _trim(tbe)
    return "".join(tbe.format()).rstrip()


def _split(spec: str) -> tuple[str, str]:
    module, sep, attribute = spec.rpartition(":")
    if not sep or not module or not attribute:
        raise AppLoadError(f"APP must look like {APP_FORMS}, got {spec!r}")
    return module, attribute


def _is_path(module: str) -> bool:
    return module.endswith(".py") or "/" in module or os.sep in module


def _not_found_hint() -> str:
    return (
        f"modules are looked up from the current directory ({os.getcwd()}) and sys.path: "
        "cd to the project directory, or add it to PYTHONPATH"
    )


def _import(name: str, shown: str) -> ModuleType:
    """Import ``name``; ``shown`` is how the user wrote it (for messages)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == name or name.startswith(f"{missing}."):
            raise AppLoadError(f"cannot import {shown!r}: {exc}; {_not_found_hint()}") from None
        raise AppLoadError(f"importing {shown!r} failed:\n{user_traceback(exc)}") from None
    except Exception as exc:
        raise AppLoadError(f"importing {shown!r} failed:\n{user_traceback(exc)}") from None


def _import_file(written: str) -> ModuleType:
    """Load ``path/to/file.py`` as module ``file``, its directory first on sys.path (so the
    worker processes import it the same way)."""
    path = Path(written)
    if path.suffix != ".py":
        raise AppLoadError(f"APP must look like {APP_FORMS}; {written!r} is not a .py file")
    if not path.is_file():
        raise AppLoadError(
            f"{written!r} does not exist (looked in {os.getcwd()}); APP is {APP_FORMS}"
        )
    path = path.resolve()
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) != str(path):
        raise AppLoadError(
            f"{written!r} would be imported as module {name!r}, but a module of that name is "
            f"already loaded (from {getattr(loaded, '__file__', 'built-in')}); rename the file"
        )
    directory = str(path.parent)
    if directory in sys.path:
        sys.path.remove(directory)
    sys.path.insert(0, directory)
    return _import(name, written)


def _attribute(module: ModuleType, shown: str, attribute: str) -> Any:
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AppLoadError(f"{shown!r} has no attribute {attribute!r}") from None
    return target


def _needs_arguments(target: Any) -> str | None:
    """``name(signature)`` when ``target`` cannot be called without arguments."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin without a signature: just try it
        return None
    try:
        signature.bind()
    except TypeError:
        empty = inspect.Parameter.empty
        plain = signature.replace(
            parameters=[p.replace(annotation=empty) for p in signature.parameters.values()],
            return_annotation=inspect.Signature.empty,
        )
        return f"{getattr(target, '__name__', type(target).__name__)}{plain}"
    return None


def _call_factory(spec: str, target: Any) -> Any:
    needs = _needs_arguments(target)
    if needs is not None:
        raise AppLoadError(
            f"{spec} is not a Flow: {needs} takes arguments, so it is not a factory: a factory "
            "takes none and returns a Flow; did you mean the Flow object?"
        )
    try:
        return target()
    except Exception as exc:
        raise AppLoadError(
            f"{spec} is not a Flow, and calling it as a factory failed:\n{user_traceback(exc)}"
        ) from None


def load_app(spec: str) -> Flow[Any, Any, Any]:
    """The Flow named by ``module:attribute`` or ``path/to/file.py:attribute`` (calling it
    when it is a factory). ``$PROCFLOW_REDIS_URL`` is parsed first: a Flow made at import
    reads it, and a bad one is the user's setting, not an error of their module."""
    module_name, attribute = _split(spec)
    if os.environ.get(REDIS_URL_ENV):
        RedisSettings.from_url(os.environ[REDIS_URL_ENV])
    if _is_path(module_name):
        module = _import_file(module_name)
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        module = _import(module_name, module_name)
    target = _attribute(module, module_name, attribute)
    if not isinstance(target, Flow) and callable(target):
        target = _call_factory(spec, target)
    if not isinstance(target, Flow):
        raise AppLoadError(
            f"{spec} is a {type(target).__name__}, not a Flow or a function returning one"
        )
    return target


def report_retried(queue: str, wanted: Sequence[str], moved: Sequence[str]) -> int:
    """Say what a retry of ``queue``'s failed jobs did (both command lines): how many went
    back, or that there were none; the ``wanted`` ids that were not on the failed list, on
    stderr. Returns the exit status: 1 when some wanted id was not moved."""
    if not wanted and not moved:
        print(shown(f"no failed jobs in {queue}"))
        return 0
    print(shown(f"put {len(moved)} job(s) back on {queue!r}"))
    unknown = [i for i in dict.fromkeys(wanted) if i not in set(moved)]
    if unknown:
        print(
            shown(f"error: not on the failed list of {queue!r}: {', '.join(unknown)}"),
            file=sys.stderr,
        )
        return 1
    return 0
