"""The bundle's lobbyctl (packaging/lobby.spec): `lobby.ctl:main`, as the console script."""

import os
import sys

# as in lobbyd.py: `lobbyctl render -o` may be followed by nothing, but keep the
# environment of whatever a future command starts the operator's own
_original = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
if _original is not None:
    os.environ["LD_LIBRARY_PATH"] = _original
else:
    os.environ.pop("LD_LIBRARY_PATH", None)

from lobby.ctl import main  # noqa: E402 - after the environment is put back

sys.exit(main())
