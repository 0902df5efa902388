"""Redis Cluster's hash slots: which part of a key it hashes, and the slot it lands in.

A flow whose name and queue names carry one hash tag (``{pay}``, ``{pay}.check``) keeps all
its keys in one slot (``FlowDefinition.on_cluster`` checks it).
"""

from __future__ import annotations

__all__ = ["hash_tag", "key_slot"]


def _crc16(data: bytes) -> int:
    """CRC-16/XMODEM, as Redis Cluster hashes keys."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def hash_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes: the text of its first non-empty ``{…}``, or
    the whole key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: str) -> int:
    """The cluster hash slot (0 to 16383) of ``key``."""
    return _crc16(hash_tag(key).encode()) % 16384
