"""``python -m kdzoo.eval``: the same program as ``kdzoo eval`` (:mod:`kdzoo.cli.eval`); the
evaluation library is :mod:`kdzoo.evaluation`."""
import sys

if __name__ == "__main__":
    from kdzoo.cli import run_command

    sys.exit(run_command("eval"))
