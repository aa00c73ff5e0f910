"""What confines the files model code sees, for the tests that run against each: Landlock (where the kernel
has it) and, for a root parent, the filesystem view that stands in for it elsewhere (thyme.sandbox.fsview).
An ordinary user has no view to test: `test_fsview.py` checks that it is refused with a clear error."""

from __future__ import annotations

import os

FILESYSTEMS = ["auto", "view"] if os.geteuid() == 0 else ["auto"]
