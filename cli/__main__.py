"""``python -m frametrans.cli`` (used by torchrun)."""

from frametrans.cli.main import main

if __name__ == "__main__":
    main()
