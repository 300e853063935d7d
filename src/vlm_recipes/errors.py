"""The one exception type for bad user input.

The CLI turns an `InputError` into a single line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input from the user: the message names the input and says how to fix it."""
