"""The project's one error type for input a user can fix, and `one_line` for its messages.

`InputError` is raised for bad input and bad state: a config field, a dataset,
a workdir, a checkpoint. `python -m ncfm_jax.main` prints it as one line and
exits 2; any other exception is a bug and keeps its traceback (exit 1).
"""

import re


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
