"""The ``kdzoo`` command: ``kdzoo train|eval|predict|export|convert|embed|publish|shapes|convert-data|compare ...``.

Each command is a thin argparse module here (``kdzoo/cli/<command>.py``: ``add_arguments(parser)``
and ``run(args) -> int``) over a library that never exits the process. ``python -m kdzoo.<command>``
and ``python -m kdzoo <command>`` are the same program. One exit-status policy for all of them:

* 0: done;
* 1: the work ran and failed part way (images that could not be read, an export whose parity
  check failed);
* 2: nothing was done because the command line or an input is wrong (argparse's usage errors, a
  missing or corrupt file, a refused output folder, an unknown model name, a failed download):
  one line ``error: ...`` on stderr, no traceback (``KDZOO_DEBUG=1`` shows it);
* 130: interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Any, Callable, Sequence

__all__ = ["COMMANDS", "main", "run_command", "UsageError"]

COMMANDS = {
    "train": "train a recipe (a detector, or a student distilled from a teacher)",
    "eval": "COCO box AP of a model or a results file; side-by-side summary of runs",
    "predict": "detect objects in image files and draw them",
    "export": "export a detector to ONNX, torch.export or OpenVINO, checked against eager",
    "convert": "convert an MMDetection / CrossKD checkpoint into a kdzoo model folder",
    "embed": "embed a training run in the package as an offline pretrained tag",
    "publish": "upload a training run to the Hugging Face Hub with its model card",
    "shapes": "generate the synthetic shapes dataset (COCO format)",
    "convert-data": "convert a detection dataset between COCO JSON, YOLO and Pascal VOC",
    "compare": "train several recipes side by side and print their AP next to their teacher's",
}


class UsageError(Exception):
    """A wrong command line that argparse cannot see (a value out of range, a missing pair)."""


# Errors a library raises about its input: reported in one line. Anything else is a bug and keeps
# its traceback.
_INPUT_ERRORS = (OSError, ValueError, KeyError, LookupError, RuntimeError, ImportError, TypeError)


def _message(error: BaseException) -> str:
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return str(error) or type(error).__name__


def _call(run: Callable[[argparse.Namespace], Any], args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        return int(run(args) or 0)
    except UsageError as e:
        parser.error(str(e))  # exits with status 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _INPUT_ERRORS as e:
        if os.environ.get("KDZOO_DEBUG"):
            traceback.print_exc()
        print(f"error: {_message(e)}", file=sys.stderr)
        return 2
    raise AssertionError("unreachable")


def _module(command: str) -> Any:
    return importlib.import_module(f"kdzoo.cli.{command.replace('-', '_')}")  # convert-data: cli/convert_data.py


def _parser(command: str, prog: str) -> argparse.ArgumentParser:
    module = _module(command)
    parser = argparse.ArgumentParser(prog=prog, description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    return parser


def run_command(command: str, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run one command as its own program (``python -m kdzoo.<command>``)."""
    parser = _parser(command, prog or f"python -m kdzoo.{command}")
    argv = None if argv is None else list(argv)
    # train takes KEY=VALUE overrides before or after its options
    parse = parser.parse_intermixed_args if getattr(_module(command), "INTERMIXED", False) else parser.parse_args
    args = parse(argv)
    return _call(_module(command).run, args, parser)


def main(argv: Sequence[str] | None = None) -> int:
    """``kdzoo COMMAND ...``: the console script ``[project.scripts]`` installs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="kdzoo", description="kdzoo: distilled object detectors, one command.",
                                  epilog="kdzoo COMMAND --help shows a command's options.")
    top.add_argument("command", choices=list(COMMANDS), metavar="COMMAND",
                     help="; ".join(f"{name}: {text}" for name, text in COMMANDS.items()))
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        top.parse_args(argv[:1])  # argparse's "invalid choice" error, exit status 2
    return run_command(argv[0], argv[1:], prog=f"kdzoo {argv[0]}")
