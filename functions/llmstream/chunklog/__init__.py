"""The chunk log: one append-only, per-task sequence of events, and its backends."""

from __future__ import annotations

from llmstream.chunklog.base import ChunkLog

__all__ = ["ChunkLog"]
