"""The one exception type for bad user input.

The CLI turns a `UserError` into its message on stderr and exit code 2; anything else is our bug and
keeps its traceback. Messages are one sentence naming the problem and the fix.
"""


class UserError(Exception):
    """Bad input from the user (config, data, model folder, run folder): exit code 2, no traceback."""
