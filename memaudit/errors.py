"""The one exception type that reaches users as a one-line message."""


class MemauditError(Exception):
    """A problem with the user's input or environment, reported as one line and exit code 2.

    The message must name what is wrong and where (file and line, or option), because the CLI
    prints it without a traceback.
    """

    exit_code = 2
