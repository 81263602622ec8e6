"""``python -m edgebert`` and the ``edgebert`` command: the command line, or, in an install of the
runtime alone, what to install for it."""

import sys


def main() -> None:
    try:
        from edgebert.cli import main as command_line
    except ModuleNotFoundError as exc:
        if exc.name not in ("click", "rich"):
            raise
        from edgebert.errors import install

        sys.exit(f"Error: edgebert's command line needs the Python package '{exc.name}': {install('cli')}")
    command_line()


if __name__ == "__main__":
    main()
