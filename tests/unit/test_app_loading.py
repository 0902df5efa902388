"""``procflow.app.load_app``: the APP spellings a user tries, and the errors they get."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from procflow import ConfigurationError, Flow
from procflow.app import load_app

FLOW_SOURCE = """\
from procflow import Flow, QueueSpec

flow = Flow("fileapp", [QueueSpec("work")])


def make_flow():
    return flow


def make_flow_with_defaults(name="defaults"):
    return Flow(name, [QueueSpec("work")])


CALLS = []


def check(job):
    CALLS.append(job)
    return {}
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh current directory; sys.path and sys.modules are restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def unique(stem: str) -> str:
    """A module name no other test imported (sys.modules caches by name)."""
    return f"{stem}_{uuid.uuid4().hex[:8]}"


def write(path: Path, source: str = FLOW_SOURCE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def test_a_py_file_in_the_current_directory(project: Path) -> None:
    name = unique("myapp")
    write(project / f"{name}.py")
    flow = load_app(f"{name}.py:flow")
    assert isinstance(flow, Flow) and flow.name == "fileapp"
    assert sys.modules[name].__file__ == str(project / f"{name}.py")


@pytest.mark.parametrize("prefix", ["./", "path/to/", "ABSOLUTE/"])
def test_a_path_to_a_py_file_puts_its_directory_first_on_sys_path(
    project: Path, prefix: str
) -> None:
    name = unique("myapp")
    prefix = prefix.replace("ABSOLUTE/", f"{project}/nested/")
    path = write(project / prefix.removeprefix(f"{project}/") / f"{name}.py")
    flow = load_app(f"{prefix}{name}.py:make_flow")
    assert flow.name == "fileapp"
    # worker processes import the module by its stem from the same sys.path
    assert sys.path[0] == str(path.parent.resolve())
    assert name in sys.modules


def test_a_py_file_that_does_not_exist_says_what_app_looks_like(project: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_app("./nothere.py:flow")
    message = str(info.value)
    assert "nothere.py" in message and "does not exist" in message
    assert "module:attribute" in message and "path/to/file.py:attribute" in message
    assert str(project) in message


def test_a_py_file_named_like_an_imported_module_is_refused(project: Path) -> None:
    write(project / "json.py")
    with pytest.raises(ConfigurationError, match="rename"):
        load_app("json.py:flow")


def test_a_module_not_found_names_the_current_directory_and_suggests_cd(
    project: Path,
) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_app("nomodule_xyz.flows:flow")
    message = str(info.value)
    assert "cannot import 'nomodule_xyz.flows'" in message
    assert str(project) in message and "sys.path" in message
    assert "cd " in message and "PYTHONPATH" in message


def user_error(project: Path, source: str) -> tuple[str, str]:
    name = unique("broken")
    write(project / f"{name}.py", source)
    with pytest.raises(ConfigurationError) as info:
        load_app(f"{name}:flow")
    return str(info.value), str(project / f"{name}.py")


def test_a_name_error_while_importing_shows_only_the_users_traceback(project: Path) -> None:
    message, path = user_error(project, "x = 1\n\ndef f():\n    return undefined_name\n\nf()\n")
    assert "NameError" in message and "undefined_name" in message
    assert f'File "{path}", line 4, in f' in message
    assert f'File "{path}", line 6, in <module>' in message
    assert "<frozen" not in message and "importlib" not in message
    assert "procflow" not in message.replace(path, "")


def test_a_syntax_error_while_importing_shows_the_line(project: Path) -> None:
    message, path = user_error(project, "def broken(:\n    pass\n")
    assert "SyntaxError" in message and path in message and "def broken(:" in message
    assert "<frozen" not in message and "importlib" not in message


def test_a_missing_dependency_of_the_users_module_is_not_a_missing_module(
    project: Path,
) -> None:
    message, path = user_error(project, "import missing_dependency_q\n")
    assert "No module named 'missing_dependency_q'" in message
    assert f'File "{path}", line 1' in message
    assert "PYTHONPATH" not in message


def test_a_function_that_needs_arguments_is_not_called(project: Path) -> None:
    name = unique("workers")
    write(project / f"{name}.py")
    with pytest.raises(ConfigurationError) as info:
        load_app(f"{name}:check")
    message = str(info.value)
    assert "check(job) takes arguments, so it is not a factory" in message
    assert "a factory takes none and returns a Flow; did you mean the Flow object?" in message
    assert sys.modules[name].CALLS == []


def test_a_factory_with_default_arguments_is_called(project: Path) -> None:
    name = unique("factory")
    write(project / f"{name}.py")
    assert load_app(f"{name}:make_flow_with_defaults").name == "defaults"


def test_a_factory_that_raises_shows_its_traceback(project: Path) -> None:
    name = unique("factory")
    write(project / f"{name}.py", "def make():\n    raise RuntimeError('no config')\n")
    with pytest.raises(ConfigurationError) as info:
        load_app(f"{name}:make")
    message = str(info.value)
    assert "RuntimeError: no config" in message
    assert f'File "{project / name}.py", line 2, in make' in message
