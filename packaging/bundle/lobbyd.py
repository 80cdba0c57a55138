"""The bundle's lobbyd (packaging/lobby.spec): `lobby.lobbyd:main`, as the console script."""

import os

# PyInstaller's bootloader points LD_LIBRARY_PATH at the bundle's libraries, for this
# process; what lobbyd starts (CALLBACK, exec checks) must see the system's own, as
# outside the bundle. The bootloader kept the original value in LD_LIBRARY_PATH_ORIG.
_original = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
if _original is not None:
    os.environ["LD_LIBRARY_PATH"] = _original
else:
    os.environ.pop("LD_LIBRARY_PATH", None)

from lobby.lobbyd import main  # noqa: E402 - after the environment is put back

main()  # returns when lobbyd stops; exits 2 itself on a bad setting
