"""``python -m twinsparse ...`` is the ``twinsparse`` command (see ``twinsparse --help``)."""
from twinsparse.accel.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
