"""procflow.server.RedisServer: a server that does not become ready is not left running."""

from __future__ import annotations

import pytest

from procflow.errors import ServerStartError
from procflow.server import RedisServer
from tests.conftest import server_binary

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_a_server_not_ready_in_time_is_stopped_not_left_behind() -> None:
    server = RedisServer(server_binary("redis"))
    with pytest.raises(ServerStartError, match="did not answer within 0 s"):
        server.start(timeout=0)
    assert server.process is not None and server.process.poll() is not None
    server.stop()
