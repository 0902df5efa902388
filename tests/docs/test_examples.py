"""Every Python block of README.md and docs/**/*.md runs, or is a fragment on purpose.

How a page's blocks run (``test_page_examples_run``, one test per page):

- The page's blocks run in order in one namespace, as a reader types them into one session:
  a later block uses the ``flow`` an earlier one built. Tracebacks point at the page's lines.
- Against a private ``redis-server`` this module starts (never the machine's 6379): every
  ``redis://127.0.0.1…``/``redis://localhost…`` URL in a block is replaced by the private
  server's URL, and ``$PROCFLOW_REDIS_URL`` names it for flows built without a URL. The server
  is flushed before each page.
- A block with top-level ``await``/``async with`` runs as the body of a coroutine, as in
  ``python -m asyncio``.
- A block that defines ``test_*`` functions is a test module (testing.md): after it ran, each
  is called as pytest would, with ``procflow_redis_url`` (the server flushed first) and
  ``tmp_path`` (a new directory).
- Workers the blocks start are stopped by the blocks themselves (``with Supervisor(…)``,
  ``run_until_idle``); after the page, any Flow's supervisor still running is stopped, and
  ``no_leaks`` fails the test if a process is left.
- ``BESIDE`` lists what a page relies on without showing it: async.md is the client side of
  a flow whose workers "run elsewhere", so the test runs them beside the page.

A block marked ``<!-- fragment: why -->`` on the line before its fence is shown, not run (it
needs something the test cannot give it, such as your app module, or it shows a type error on
purpose); ``test_fragment_compiles`` compiles it, so a syntax error still fails.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import linecache
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from procflow import Backoff, Flow, QueueSpec, Supervisor
from procflow.server import RedisServer
from procflow.supervisor.monitor import FlowMonitor
from tests.conftest import SERVER_KINDS, SESSION_SERVERS, server_binary

from .markdown import FRAGMENT, PAGES, ROOT, Block, blocks, read

_LOCAL_URL = re.compile(r"redis://(?:127\.0\.0\.1|localhost)(?::\d+)?(?:/\d+)?")
_FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


def _python(page: str) -> list[Block]:
    return [b for b in blocks(page) if b.python]


RUNNABLE = {p: [b for b in _python(p) if b.fragment is None] for p in PAGES}
FRAGMENTS = [b for p in PAGES for b in _python(p) if b.fragment is not None]


# -- what a page relies on without showing it -------------------------------------------------


@contextlib.contextmanager
def _async_workers(url: str, namespace: dict[str, Any]) -> Iterator[None]:
    """async.md: the README's ``check`` stage of the ``access`` flow, its workers under a
    Supervisor; the page's first block uses this ``flow``, its last builds the same flow."""
    flow = Flow(
        "access",
        [QueueSpec("check", attributes_to_get=["userId", "roleIds"])],
        lookup_attributes=["userId"],
        redis_url=url,
    )
    flow.create_workers("check", lambda job: {"access": bool(job["roleIds"])}, count=2)
    namespace["flow"] = flow
    with Supervisor(flow):
        yield


BESIDE: dict[str, Callable[[str, dict[str, Any]], contextlib.AbstractContextManager[None]]] = {
    "docs/async.md": _async_workers,
}


# -- running ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def doc_server() -> Iterator[RedisServer]:
    srv = RedisServer(server_binary(SERVER_KINDS[0]))
    srv.start()
    SESSION_SERVERS.add(srv.pid or 0)
    yield srv
    SESSION_SERVERS.discard(srv.pid or 0)
    srv.stop()


def _flush(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()


def _compile(block: Block, source: str) -> Any:
    """The block compiled so that its line numbers are the page's (a traceback shows the
    block's lines, ``docs/guide.md:120`` is the page's line 120)."""
    padded = "\n" * block.line + source
    name = f"{block.page} (example at line {block.line})"
    linecache.cache[name] = (len(padded), None, padded.splitlines(True), name)
    return compile(padded, name, "exec", flags=_FLAGS, dont_inherit=True)


def _localize(block: Block, url: str) -> str:
    source = _LOCAL_URL.sub(url, block.text)
    assert ":6379" not in _LOCAL_URL.sub("", source.replace(url, "")) or "cluster" in source, (
        f"{block.where}: a Redis URL the test does not rewrite"
    )
    return source


def _call_tests(defined: dict[str, Any], url: str, tmp_path: Path, block: Block) -> list[str]:
    called = []
    for name, fn in defined.items():
        if not (name.startswith("test_") and inspect.isfunction(fn)):
            continue
        kwargs: dict[str, Any] = {}
        for param in inspect.signature(fn).parameters:
            if param == "procflow_redis_url":
                _flush(url)
                kwargs[param] = url
            elif param == "tmp_path":
                kwargs[param] = tmp_path / name
                kwargs[param].mkdir()
            else:
                pytest.fail(f"{block.where}: {name} wants a fixture the doc test lacks: {param}")
        fn(**kwargs)
        called.append(name)
    return called


def _stop_flows(namespace: dict[str, Any]) -> None:
    for value in list(namespace.values()):
        if isinstance(value, Flow) and value.supervisor is not None:
            value.supervisor.stop()


def run_page(page: str, url: str, tmp_path: Path) -> list[str]:
    """Run the page's blocks in order in one namespace; returns what ran."""
    namespace: dict[str, Any] = {"__name__": "docs_" + re.sub(r"\W", "_", page)}
    ran = []
    beside = BESIDE.get(page)
    with contextlib.ExitStack() as stack:
        stack.callback(_stop_flows, namespace)
        if beside is not None:
            stack.enter_context(beside(url, namespace))
        for block in RUNNABLE[page]:
            before = set(namespace)
            code = _compile(block, _localize(block, url))
            if code.co_flags & inspect.CO_COROUTINE:
                asyncio.run(eval(code, namespace))
            else:
                exec(code, namespace)
            ran.append(block.where)
            fresh = {k: v for k, v in namespace.items() if k not in before}
            ran += _call_tests(fresh, url, tmp_path, block)
    return ran


@pytest.mark.parametrize("page", [p for p in PAGES if RUNNABLE[p]])
def test_page_examples_run(
    page: str,
    doc_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_leaks: None,
) -> None:
    _flush(doc_server.url)
    monkeypatch.setenv("PROCFLOW_REDIS_URL", doc_server.url)
    ran = run_page(page, doc_server.url, tmp_path)
    assert len(ran) >= len(RUNNABLE[page])


def _as_defs(text: str) -> str:
    """A signature block (``Supervisor(flow, *, node_id=None, …)``, one call per statement)
    as ``def`` headers, so that its parameter list is checked as Python checks one."""
    out, i = [], 0
    for m in re.finditer(r"^([A-Za-z_][\w.]*)\(", text, re.MULTILINE):
        if m.start() < i:
            continue
        depth, j = 0, m.end() - 1
        while True:
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            if depth == 0:
                break
            j += 1
        out.append(f"def {m[1].split('.')[-1]}{text[m.end() - 1 : j + 1]}: ...")
        i = j + 1
    assert out, "no signature found"
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("block", FRAGMENTS, ids=lambda b: b.where)
def test_fragment_compiles(block: Block) -> None:
    """A fragment compiles; a signature (its reason starts with "a signature") compiles as
    the parameter list of a ``def``."""
    why = block.fragment or ""
    assert len(why) >= 10, f"{block.where}: say why it is a fragment"
    source = _as_defs(block.text) if why.startswith("a signature") else block.text
    _compile(block, source)


#: what a signature block's names are in the code
SIGNED: dict[str, Callable[..., Any]] = {
    "Flow": Flow,
    "QueueSpec": QueueSpec,
    "Backoff": Backoff,
    "Supervisor": Supervisor,
    "FlowMonitor": FlowMonitor,
    "create_workers": Flow.create_workers,
    "create_parent_workers": Flow.create_parent_workers,
    "create_child_workers": Flow.create_child_workers,
}


def _shown(node: ast.arguments) -> list[tuple[str, str]]:
    """(name, default as written or "") of a def's parameters, in order."""
    positional = [*node.posonlyargs, *node.args]
    defaults = [""] * (len(positional) - len(node.defaults)) + [
        ast.unparse(d) for d in node.defaults
    ]
    out = list(zip((a.arg for a in positional), defaults, strict=True))
    out += [
        (a.arg, ast.unparse(d) if d is not None else "")
        for a, d in zip(node.kwonlyargs, node.kw_defaults, strict=True)
    ]
    if node.kwarg is not None:
        out.append(("**" + node.kwarg.arg, ""))
    return out


def _real(fn: Callable[..., Any]) -> list[tuple[str, str]]:
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.VAR_KEYWORD:
            out.append(("**" + p.name, ""))
            continue
        default = p.default
        if default is p.empty:
            out.append((p.name, ""))
        elif repr(default).startswith("<"):  # a dataclass factory: shown as a call
            out.append((p.name, "<factory>"))
        else:
            out.append((p.name, repr(default)))
    return out


@pytest.mark.parametrize(
    "block",
    [b for b in FRAGMENTS if (b.fragment or "").startswith("a signature")],
    ids=lambda b: b.where,
)
def test_signature_matches_the_code(block: Block) -> None:
    """A signature block names the parameters the code has, in its order, with its
    defaults (a number as written, ``86_400``, equals the code's ``86400``)."""
    for node in ast.parse(_as_defs(block.text)).body:
        assert isinstance(node, ast.FunctionDef)
        shown = _shown(node.args)
        real = _real(SIGNED[node.name])
        for (name, default), (real_name, real_default) in zip(shown, real, strict=False):
            assert name == real_name, f"{block.where} {node.name}: {shown} != {real}"
            if real_default == "<factory>":
                continue
            same = default == real_default or (
                default and real_default and ast.literal_eval(default) == eval(real_default)
            )
            assert same, f"{block.where} {node.name}({name}=): {default!r} != {real_default!r}"
        assert len(shown) == len(real), f"{block.where} {node.name}: {shown} != {real}"


def test_fragment_markers_stand_before_python_blocks() -> None:
    """A marker anywhere else (a typo in the fence, a blank line between) is a mistake."""
    wrong = []
    for page in PAGES:
        lines = read(page).splitlines()
        starts = {b.line for b in _python(page)}
        for n, line in enumerate(lines, start=1):
            if FRAGMENT.match(line.strip()) and n + 1 not in starts:
                wrong.append(f"{page}:{n}")
    assert not wrong, f"fragment markers not right before a Python fence: {wrong}"


def test_the_docs_have_python_examples() -> None:
    assert sum(len(v) for v in RUNNABLE.values()) > 10
    assert set(BESIDE) <= set(PAGES)


def test_a_broken_example_fails(doc_server: RedisServer, tmp_path: Path) -> None:
    """The runner is real: a block that raises fails the page, at the page's line."""
    page = "README.md"
    first = RUNNABLE[page][0]
    broken = Block(
        page, first.line, "python", first.text.replace("QueueSpec(", "QueueSpek(", 1), None
    )
    saved = RUNNABLE[page]
    RUNNABLE[page] = [broken]
    try:
        with pytest.raises(NameError) as info:
            run_page(page, doc_server.url, tmp_path)
    finally:
        RUNNABLE[page] = saved
    assert str(info.traceback[-1].path).startswith(f"{page} (example at line {first.line})")
    assert info.traceback[-1].lineno + 1 > first.line  # a line of the page, not of the block


@pytest.mark.parametrize("page", PAGES)
def test_links_stay_in_the_repository(page: str) -> None:
    """A relative link or image resolves to a file of this repository (never ../shared or
    anything outside it)."""
    outside = []
    for target in re.findall(r"\]\(([^)\s]+)\)", read(page)):
        if re.match(r"^[a-z]+:|^#", target):
            continue
        path = ((ROOT / page).parent / target.split("#")[0]).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            outside.append(target)
    assert not outside, f"{page}: links outside the repository or to nothing: {outside}"
