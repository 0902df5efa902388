"""The supervisor: process management for a flow's workers.

``api.py`` is the public face (``Supervisor``), ``manager.py`` the thread that forks
and watches the workers, ``settle.py`` what happens to a dead worker's job, ``watchdogs.py``
lock renewal and the time and memory limits, ``process.py`` the worker records and their
states. ``python -m procflow.supervisor APP`` runs a flow's workers on a node
(``__main__.py``; the app is loaded by ``procflow/app.py``); ``monitor.py`` the flow's caretaker,
a thread of every supervisor.
"""

from .api import SupervisedFlow, Supervisor
from .process import LifecycleEvent, SupervisorState, WorkerState

__all__ = ["LifecycleEvent", "SupervisedFlow", "Supervisor", "SupervisorState", "WorkerState"]
