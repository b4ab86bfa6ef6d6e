"""The project's one error type for input a user can fix, and `one_line` for its messages.

`InputError` is raised for bad input and bad state: a config field, a dataset,
a workdir, a checkpoint, a write that failed (`WriteError`, from `writing`).
`python -m ncfm_jax.main` prints it as one line and exits 2; any other exception
is a bug and keeps its traceback (exit 1).
"""

import contextlib
import os
import re
import shutil
from collections.abc import Sequence


class InputError(ValueError):
  """Bad input or bad state that the user can fix (config, data, workdir, checkpoint)."""


class DataNotFoundError(InputError, FileNotFoundError):
  """A dataset (or a file of it) is not where the config says; the message says
  how to get it."""


def one_line(text: str) -> str:
  """The last line of an error text (a traceback's is the error itself), without
  its exception class."""
  lines = [line.strip() for line in text.replace("\\n", "\n").splitlines() if line.strip()]
  last = lines[-1] if lines else text
  return re.sub(r"^[\w.]+(Error|Exception): ", "", last)


def config_override_message(err: Exception, argv: Sequence[str]) -> str:
  """One line for a ``--config.x.y=v`` override that ml_collections refused.

  A field the config lacks (ml_collections raises ``AttributeError(KeyError("'y'
  Did you mean ...?"))``) is named with the argument of `argv` that asked for it.
  """
  while err.args and isinstance(err.args[0], Exception):
    err = err.args[0]
  text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
  text = " ".join(text.replace("\\n", "\n").replace("\\'", "'").split())
  field = re.match(r"'([^']+)'\s*(.*)", text)
  if isinstance(err, KeyError) and field:
    name, hint = field.groups()
    for arg in argv:
      path = arg.partition("=")[0]
      if path.startswith("--config.") and name in path.split(".")[1:]:
        return f"{path}: the config has no field {name!r}" + (f" ({hint})" if hint else "")
  return f"bad config override: {text}"


class WriteError(InputError):
  """A file or checkpoint could not be written (a full disk, permissions); what was
  written before is untouched and a re-run resumes from it."""


def _os_error(err: BaseException) -> OSError | None:
  """`err` or the first OSError among its causes (orbax wraps the ones it meets)."""
  seen = set()
  while err is not None and id(err) not in seen:
    if isinstance(err, OSError):
      return err
    seen.add(id(err))
    err = err.__cause__ or err.__context__
  return None


def free_space(path: str) -> str:
  """``12.3 GB free of 250 GB`` on the filesystem holding `path` (or its parent)."""
  probe = os.path.abspath(path)
  while probe and not os.path.exists(probe):
    probe = os.path.dirname(probe)
  try:
    usage = shutil.disk_usage(probe or "/")
  except OSError:
    return "free space unknown"
  return f"{usage.free / 2**30:.2f} GB free of {usage.total / 2**30:.0f} GB"


@contextlib.contextmanager
def writing(path: str):
  """Turns an OSError raised while writing `path` (also one wrapped by a library)
  into a one-line WriteError naming the path, the error and the free space."""
  try:
    yield
  except WriteError:
    raise
  except Exception as err:  # pylint: disable=broad-except
    cause = _os_error(err)
    if cause is None:
      raise
    reason = cause.strerror or str(cause)
    raise WriteError(f"cannot write {path}: {reason} ({free_space(path)}); what was "
                     f"saved before is untouched: free space and re-run the same command "
                     f"to resume") from err
