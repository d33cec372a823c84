"""Errors that end a run with one clear line on stderr, never a traceback.

Exit status 2: bad input (a PARAMS key, a data row, a missing file); fix it and run again.
Exit status 3: the run stopped safely (a non-finite loss, a full disk); what was saved before is whole, and
resume=true continues from the last checkpoint once the cause is fixed.
"""

import errno
import functools
import os
import shutil
import sys


class UserError(Exception):
    """Bad input from the user (a PARAMS key, a data row, a missing file); the message is the whole story."""


class RowProblem(Exception):
    """A row the chat format cannot render exactly; the message is the reason, the same for every such row, so
    on_bad_rows=skip counts rows under it and on_bad_rows=error prefixes the row's file:line."""


class Dropped(Exception):
    """A row left out by design (not a bad row); the message is the reason counted in data_report.json."""


class RunStopped(Exception):
    """The run cannot go on (a non-finite loss); the message says where it stopped and what was kept."""


DISK_FULL_SIGNS = ("No space left on device", "StorageFull", "os error 28")


def disk_full(error: BaseException | None, folder: str | None = None) -> bool:
    """Whether an error, or one it was raised from, is a full disk or quota. torch.save reports it in its own
    words ("iostream error", "unexpected pos"), so an error while the folder's filesystem is left with
    (almost) no free space counts as well."""
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    if any(
        isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) or any(s in str(e) for s in DISK_FULL_SIGNS)
        for e in chain
    ):
        return True
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    if not chain or not folder:
        return False
    usage = shutil.disk_usage(folder)
    return usage.free < max(64 * 2**20, usage.total // 100)


def _fail(message: str, status: int):
    if os.environ.get("RANK", "0") == "0":
        print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def exit_on_user_error(fn):
    """Wrap an entry point: a UserError prints one line (once, on rank 0) and exits 2; a RunStopped or a full
    disk prints one line and exits 3."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UserError, RowProblem) as e:
            _fail(str(e), 2)
        except RunStopped as e:
            _fail(str(e), 3)
        except Exception as e:
            params = args[0] if args and isinstance(args[0], dict) else {}
            if not disk_full(e, os.path.abspath(params.get("output_dir", ".") or ".")):
                raise
            _fail(
                f"no space left on the device while writing ({str(e).splitlines()[0][:200]}); finished checkpoints "
                "are whole: free some space and run again with resume=true",
                3,
            )

    return wrapper
