"""The worker as a FastStream app, for ``faststream run stack.worker_app:app``.

Built from ``AMEM_*`` when imported. Under ``faststream run --workers N`` every process runs
every selected projector, so with Qdrant in local mode set ``AMEM_PROJECTORS`` to leave
``qdrant`` out (or use ``amem project run --workers N``, which shares it correctly).
"""

from __future__ import annotations

from stack.settings import Settings
from stack.workers import build_worker

app = build_worker(Settings.from_env()).app
