"""The supervisor: process management for a flow's workers.

``python -m procflow.supervisor APP`` runs a flow's workers on a node (see ``__main__``).
"""

from .core import LifecycleEvent, Supervisor

__all__ = ["LifecycleEvent", "Supervisor"]
