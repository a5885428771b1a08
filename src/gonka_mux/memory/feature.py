"""Long-term memory as a Multiplexer feature: the ``[memory]`` section and ``mux.memory``.

It has no request hooks: agents read and write it themselves (``mux.memory.put`` /
``search``); the Multiplexer only opens it, embeds through itself when asked (hybrid ranking)
and closes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .._exceptions import ConfigError
from ..features import Feature, register_feature
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
        if "memory" not in data:
            return None
        section = data["memory"]
        if not isinstance(section, Mapping):
            raise ConfigError(f"got {section!r}", source=source, key="memory", expected="a table")
        section = dict(section)
        path = section.pop("path", None)
        model = section.pop("embedding_model", None)
        if section:
            raise ConfigError(
                "unknown key(s) " + ", ".join(sorted(section)),
                source=source,
                key="memory",
                expected="path, embedding_model (embeds through the Multiplexer)",
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
