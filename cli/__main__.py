"""``python -m frametrans.cli`` (used by torchrun)."""

from frametrans.cli.main import main

main()
