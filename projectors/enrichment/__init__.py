"""Enrichment computed once per message: embedding, token count, entities.

:mod:`.entities` is pure Python and cheap to import; :mod:`.embedder` imports torch only when
:meth:`Embedder.load` runs. Both are pure libraries: the enrichment projector calls them.
"""

from projectors.enrichment.embedder import Embedder
from projectors.enrichment.entities import MAX_ENTITIES, extract_entities, normalize

__all__ = ["MAX_ENTITIES", "Embedder", "extract_entities", "normalize"]
