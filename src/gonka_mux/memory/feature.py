"""Long-term memory as a Multiplexer feature: the ``[memory]`` section and ``mux.memory``.

It has no request hooks: agents read and write it themselves (``mux.memory.put`` /
``search``); the Multiplexer only opens it, embeds through itself when asked (hybrid ranking)
and closes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..features import Feature, register_feature, reject_leftover, section_of
from .store import MemoryStore

__all__ = ["MemoryFeature"]


@register_feature
class MemoryFeature(Feature):
    name = "memory"
    sections = ("memory",)
    hooks = False

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        embedder: Any = None,
        embedding_model: str | None = None,
        **store_options: Any,
    ) -> None:
        self._path = path
        self._embedder = embedder
        self._embedding_model = embedding_model
        self._options = store_options
        self.store: MemoryStore | None = None

    @classmethod
    def from_config(cls, data: Mapping[str, Any], source: str) -> MemoryFeature | None:
        section = section_of(data, "memory", source)
        if section is None:
            return None
        path = section.pop("path", None)
        model = section.pop("embedding_model", None)
        reject_leftover(
            section, source, "memory", "path, embedding_model (embeds through the Multiplexer)"
        )
        return cls(path, embedder="mux" if model else None, embedding_model=model)

    def install(self, mux: Any) -> MemoryStore:
        embedder = mux if self._embedder == "mux" else self._embedder
        self.store = MemoryStore(
            self._path, embedder=embedder, embedding_model=self._embedding_model, **self._options
        )
        mux.add_feature(self)
        mux.memory = self.store
        return self.store

    async def aclose(self) -> None:
        if self.store is not None:
            self.store.close()  # its SQLite connection belongs to this thread
