"""Fault injection for the failure-mode tests, loaded at interpreter start when a test puts this
folder on ``PYTHONPATH``: writes to files whose path matches ``$GLIDE_FAULT_ENOSPC`` (an
``fnmatch`` pattern) fail with ``ENOSPC`` as on a full disk, after
``$GLIDE_FAULT_ENOSPC_AFTER`` bytes (default 0); ``$GLIDE_FAULT_CHUNK_DELAY`` seconds of sleep
follow each finished evaluation chunk. Nothing happens without the variables."""

import os

if os.environ.get("GLIDE_FAULT_ENOSPC"):
    from enospc import install

    install(os.environ["GLIDE_FAULT_ENOSPC"], int(os.environ.get("GLIDE_FAULT_ENOSPC_AFTER", "0")))

if os.environ.get("GLIDE_FAULT_CHUNK_DELAY"):
    # Slow evaluation down after each finished chunk, so a test can kill a rank mid-point.
    import time

    from glide.evaluation import cache

    _save = cache.PointCache.save_chunk
    _delay = float(os.environ["GLIDE_FAULT_CHUNK_DELAY"])

    def _slow_save(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        _save(self, *args, **kwargs)
        time.sleep(_delay)

    cache.PointCache.save_chunk = _slow_save  # type: ignore[method-assign]
