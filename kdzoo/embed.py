"""``python -m kdzoo.embed``: the same program as ``kdzoo embed`` (:mod:`kdzoo.cli.embed`); the
library is :mod:`kdzoo.embedded`."""
import sys

if __name__ == "__main__":
    from kdzoo.cli import run_command

    sys.exit(run_command("embed"))
