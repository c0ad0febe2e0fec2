"""``python -m customnn``: the same as the ``customnn`` command."""

from customnn.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
