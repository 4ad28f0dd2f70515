"""Fault injection for the failure-mode tests, loaded at interpreter start when a test puts this
folder on ``PYTHONPATH``: writes to files whose path matches ``$GLIDE_FAULT_ENOSPC`` (an
``fnmatch`` pattern) fail with ``ENOSPC`` as on a full disk, after
``$GLIDE_FAULT_ENOSPC_AFTER`` bytes (default 0). Nothing happens without the variable."""

import os

if os.environ.get("GLIDE_FAULT_ENOSPC"):
    from enospc import install

    install(os.environ["GLIDE_FAULT_ENOSPC"], int(os.environ.get("GLIDE_FAULT_ENOSPC_AFTER", "0")))
