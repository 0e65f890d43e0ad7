"""`python -m server` is the `tiledetect` command."""

from server.cli import main

main()
