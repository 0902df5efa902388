"""procflow: multi-stage job flows over Redis, run by a supervisor that forks one OS process
per worker.

The Redis layout is the protocol of the TypeScript library ``@guildxyz/queues``; procflow
interoperates with it byte for byte. See docs/ for the guide.
"""

from loguru import logger as _logger

from .client.flow import Flow
from .definition import Backoff, QueueSpec
from .errors import (
    ConfigurationError,
    CreateJobsError,
    DecodeError,
    EncodeError,
    IdleTimeoutError,
    JobFailedError,
    ParentError,
    ProcflowError,
    RedisFullError,
    RedisPermissionError,
    RedisReadOnlyError,
    RedisRefusedError,
    RedisUnavailableError,
    SupervisorStateError,
    UnknownFlowError,
    UnknownJobError,
    UnknownLookupAttributeError,
    UnknownQueueError,
    WaitTimeoutError,
    WorkerStartError,
)
from .handles import WorkerGroup, WorkerHandle
from .settings import RedisSettings, WorkerOptions
from .supervisor import LifecycleEvent, Supervisor
from .version import __version__
from .worker.reporting import progress

__all__ = [
    "Backoff",
    "ConfigurationError",
    "CreateJobsError",
    "DecodeError",
    "EncodeError",
    "Flow",
    "IdleTimeoutError",
    "JobFailedError",
    "LifecycleEvent",
    "ParentError",
    "ProcflowError",
    "QueueSpec",
    "RedisFullError",
    "RedisPermissionError",
    "RedisReadOnlyError",
    "RedisRefusedError",
    "RedisSettings",
    "RedisUnavailableError",
    "Supervisor",
    "SupervisorStateError",
    "UnknownFlowError",
    "UnknownJobError",
    "UnknownLookupAttributeError",
    "UnknownQueueError",
    "WaitTimeoutError",
    "WorkerGroup",
    "WorkerHandle",
    "WorkerOptions",
    "WorkerStartError",
    "__version__",
    "progress",
]

# A library stays quiet unless asked: the supervisor CLI enables procflow's logs.
_logger.disable("procflow")
