"""`python -m thyme` is the `thyme` command."""

from thyme.cli import main

main()
