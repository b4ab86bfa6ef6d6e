"""The project's one error type for input a user can fix, and `one_line` for its messages.

`InputError` is raised for bad input and bad state: a config field, a dataset,
a workdir, a checkpoint. `python -m ncfm_jax.main` prints it as one line and
exits 2; any other exception is a bug and keeps its traceback (exit 1).
"""

import re
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
