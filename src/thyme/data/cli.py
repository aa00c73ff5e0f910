"""`thyme data ...`: the data tools, one module per command, each registering itself here.

A command module defines `register(app)` that adds its command to the Typer group, parses flags, calls the
library, and renders progress; heavy imports stay inside the command so `thyme --help` stays fast.
"""

from __future__ import annotations

import typer

data_app = typer.Typer(
    help="Training data: convert released Thyme data, verify code in the sandbox, build and distill samples.",
    no_args_is_help=True,
)

# The command modules, in the order `thyme data --help` lists them.
COMMANDS: tuple[str, ...] = ("convert_cli", "verify_cli", "boxes", "distill")

for _name in COMMANDS:
    __import__(f"thyme.data.{_name}", fromlist=["register"]).register(data_app)
