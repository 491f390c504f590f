"""``python -m kdzoo.train``: the same program as ``kdzoo train`` (:mod:`kdzoo.cli.train`); the
training engine is :mod:`kdzoo.engine`."""
import sys

if __name__ == "__main__":
    from kdzoo.cli import run_command

    sys.exit(run_command("train"))
