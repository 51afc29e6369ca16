"""Process-wide settings a service applies once it has started."""
from __future__ import annotations

import gc

_settled = False


def freeze_start_up_objects() -> None:
    """Move what start-up built (modules, mappings, migrations) out of the garbage collector's scans.

    A service allocates many short-lived objects per request (an ADE page is thousands),
    which triggers full collections; each full collection walked every object the
    process holds, ~65 ms in a service, several times a 100,000-device sync. Frozen
    objects are skipped. Once per process: the first container to start does it.
    """
    global _settled
    if not _settled:
        _settled = True
        gc.collect()
        gc.freeze()
