"""What an error reply means, and where a connection goes next: decided once, without I/O,
for the sync wire (``wire.py``) and the async link (``link.py``, ``aio.py``).

:func:`classify` sorts an error reply into one of five kinds:

    SCRIPT_MISSING   NOSCRIPT: load the script and send the call again (it did not run)
    NOT_READY        LOADING, MASTERDOWN, TRYAGAIN: an outage; drop the connection, retry later
    MOVED            the slot lives on another master now (``target``): reconnect there
    ASK              the slot is migrating; its keys are on the importing node (``target``)
                     already: send the call there, each command after an ASKING
    REFUSED          everything else: the server's refusal (``errors.refusal``)

A :class:`Route` is one connection's memory of the redirects it read (Cluster) and of a
READONLY from a demoted master (Sentinel): where its next connection goes, whether that
connection is in an ASK window (its commands sent after an ASKING), and when the window
ends. The drivers do the I/O: they ask the directory (the sentinels' master, the cluster's
slot map) when the route names no address, connect, and send ``with_asking`` when asked to.
:func:`follow` says whether a refused call is sent again (up to ``REDIRECTS`` times).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import CreateJobsError, RedisRefusedError
from ..settings import RedisSettings

__all__ = [
    "ASKING",
    "ASKING_FOR",
    "REDIRECTS",
    "ErrorReply",
    "Kind",
    "Route",
    "classify",
    "follow",
    "with_asking",
]

#: an ASKING command as it goes on the wire
ASKING = b"*1\r\n$6\r\nASKING\r\n"
#: how long a connection that an ASK reply sent to a slot's importing node keeps asking
#: there before it looks at the slot map again (seconds)
ASKING_FOR = 1.0
#: how many times a call refused with MOVED or ASK is sent again where the reply points
REDIRECTS = 3

Address = tuple[str, int]


class Kind(enum.Enum):
    SCRIPT_MISSING = "script missing"
    NOT_READY = "not ready"
    MOVED = "moved"
    ASK = "ask"
    REFUSED = "refused"


_NOT_READY = ("LOADING", "MASTERDOWN", "TRYAGAIN")


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An error reply read: its kind, its text, its first word, and where a MOVED or ASK
    points."""

    kind: Kind
    text: str
    code: str
    target: Address | None = None


def _target(text: str) -> Address | None:
    """Where ``MOVED 3999 127.0.0.1:6381`` (or ``ASK …``) points."""
    host, _, port = text.rsplit(maxsplit=1)[-1].rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


def classify(text: str) -> ErrorReply:
    """The kind of the error reply ``text`` (as hiredis hands it over, without the dash)."""
    code = text.split(" ", 1)[0]
    if code == "NOSCRIPT":
        return ErrorReply(Kind.SCRIPT_MISSING, text, code)
    if code in _NOT_READY:
        return ErrorReply(Kind.NOT_READY, text, code)
    if code in ("MOVED", "ASK"):  # no address given: the slot map says where
        return ErrorReply(Kind.MOVED if code == "MOVED" else Kind.ASK, text, code, _target(text))
    return ErrorReply(Kind.REFUSED, text, code)


def follow(error: BaseException, settings: RedisSettings) -> bool:
    """Whether a call that raised ``error`` is sent again where a redirect points: under
    Cluster, a MOVED or ASK refusal (the call did not run), unless part of a batch was
    written already (``CreateJobsError.created``: sending it again would write it twice)."""
    if not settings.cluster_nodes or not isinstance(error, RedisRefusedError):
        return False
    if error.code not in ("MOVED", "ASK"):
        return False
    return not (isinstance(error, CreateJobsError) and error.created)


class Route:
    """Where one connection (the sync ``Wire``, the async store's link) goes next.

    ``note`` takes every error reply read on the connection and says whether the
    connection must be dropped before its next use: a MOVED or ASK under Cluster (the next
    connection goes where it points), a READONLY under Sentinel (the master was demoted:
    the next connection goes where the sentinels point now). ``next_hop`` is read when
    connecting: an address, or None for "ask the directory"; a hop to an ASK's importing
    node opens an ASK window of ``ASKING_FOR`` seconds, after which the connection is
    dropped and the slot map read again."""

    __slots__ = ("ask_at", "asking_until", "moved_to", "settings")

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.moved_to: Address | None = None
        self.ask_at: Address | None = None
        #: while connected to an ASK's importing node: when to stop asking there (monotonic)
        self.asking_until = 0.0

    def note(self, reply: ErrorReply) -> bool:
        """An error reply read: True if the connection must be dropped before its next use."""
        if self.settings.cluster_nodes and reply.kind is Kind.MOVED:
            self.moved_to, self.ask_at = reply.target, None
            return True
        if self.settings.cluster_nodes and reply.kind is Kind.ASK:
            self.ask_at = reply.target
            return True
        return bool(self.settings.sentinels) and reply.code == "READONLY"

    @property
    def finds_master(self) -> bool:
        """Whether the address comes from a directory (Sentinel, Cluster), not the URL."""
        return bool(self.settings.sentinels or self.settings.cluster_nodes)

    def next_hop(self, now: float) -> Address | None:
        """Where the next connection goes, when a redirect said so (None: where the
        directory says). Going to an ASK's importing node starts an ASK window."""
        asked, self.ask_at = self.ask_at, None
        moved, self.moved_to = self.moved_to, None
        self.asking_until = 0.0
        if asked is not None:
            self.asking_until = now + ASKING_FOR
            return asked
        return moved

    @property
    def asking(self) -> bool:
        """Whether the connection is in an ASK window (each command after an ASKING)."""
        return self.asking_until > 0

    def window_over(self, now: float) -> bool:
        """An ASK window that has lasted long enough: drop the connection, read the slot map."""
        return 0 < self.asking_until < now

    def left(self) -> None:
        """The connection was dropped: its ASK window ends with it."""
        self.asking_until = 0.0


def with_asking(packed: bytes) -> tuple[bytes, list[bool]]:
    """``packed`` (RESP commands back to back) with an ASKING before each command (one
    before a MULTI covers its whole transaction), and for each reply the caller will read,
    whether an ASKING reply comes before it."""
    out: list[bytes] = []
    flags: list[bool] = []
    at, in_multi = 0, False
    while at < len(packed):
        start = at
        end = packed.index(b"\r\n", at)
        count, at = int(packed[at + 1 : end]), end + 2
        name = b""
        for i in range(count):
            end = packed.index(b"\r\n", at)
            size, at = int(packed[at + 1 : end]), end + 2
            if i == 0:
                name = packed[at : at + size].upper()
            at += size + 2
        if in_multi:
            flags.append(False)
            in_multi = name not in (b"EXEC", b"DISCARD")
        else:
            out.append(ASKING)
            flags.append(True)
            in_multi = name == b"MULTI"
        out.append(packed[start:at])
    return b"".join(out), flags
