r"""Text from a model or its code, made safe to print on a terminal.

A model (or the code it wrote) can emit control characters: an escape sequence that clears the screen,
moves the cursor, retitles the terminal or hides what follows. Everything the CLI shows from that side goes
through `printable`, which shows them escaped instead:

    console.print(printable(result.stdout), markup=False)      # "\x1b[2J" arrives as the four characters \x1b
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 and C1 controls and DEL; newline and tab stay


def printable(text: str) -> str:
    """`text` with control characters other than newline and tab shown as Python escapes (`\\x1b`)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
