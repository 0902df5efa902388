"""procflow: multi-stage job flows over Redis, run by a supervisor that forks one OS process
per worker.

The Redis layout is the protocol of the TypeScript library ``@guildxyz/queues``; procflow
interoperates with it byte for byte. See docs/ for the guide.
"""

from loguru import logger as _logger

from .errors import (
    ConfigurationError,
    DecodeError,
    EncodeError,
    ProcflowError,
    RedisUnavailableError,
    SupervisorStateError,
    UnknownLookupAttributeError,
    UnknownQueueError,
    WaitTimeoutError,
    WorkerStartError,
)
from .flow import Backoff, Flow, QueueSpec
from .settings import RedisSettings
from .supervisor import LifecycleEvent, Supervisor
from .workers import WorkerGroup, WorkerHandle

__version__ = "0.1.0"

__all__ = [
    "Backoff",
    "ConfigurationError",
    "DecodeError",
    "EncodeError",
    "Flow",
    "LifecycleEvent",
    "ProcflowError",
    "QueueSpec",
    "RedisSettings",
    "RedisUnavailableError",
    "Supervisor",
    "SupervisorStateError",
    "UnknownLookupAttributeError",
    "UnknownQueueError",
    "WaitTimeoutError",
    "WorkerGroup",
    "WorkerHandle",
    "WorkerStartError",
    "__version__",
]

# A library stays quiet unless asked: the supervisor CLI enables procflow's logs.
_logger.disable("procflow")
