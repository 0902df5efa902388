"""``procflow.aio``, the public path of :class:`AsyncFlow`, which lives in
``procflow.client.aio`` (the client side's package) since issue 18, part 4."""

from .client.aio import AsyncFlow

__all__ = ["AsyncFlow"]
