"""``python -m dataferry_client`` is the ``dataferry`` command."""

from dataferry_client.cli import main

main()
