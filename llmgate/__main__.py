"""
``python -m llmgate [options]``: the same as ``twistd -n llmgate [options]``.
"""

import sys


def main() -> None:
    from twisted.scripts.twistd import run

    from llmgate import tap

    tap.HELP_COMMAND = "python -m llmgate --help"
    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "llmgate", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
