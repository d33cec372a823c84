"""User errors: one clear line on stderr and exit status 2, never a traceback."""

import functools
import os
import sys


class UserError(Exception):
    """Bad input from the user (a PARAMS key, a data row, a missing file); the message is the whole story."""


def exit_on_user_error(fn):
    """Wrap an entry point so a UserError prints one line (once, on rank 0) and exits with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            if os.environ.get("RANK", "0") == "0":
                print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper
