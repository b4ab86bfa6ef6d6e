"""`python -m ncfm_jax` is `python -m ncfm_jax.main`."""

from absl import app

from ncfm_jax.main import main
from ncfm_jax.main import parse_flags

app.run(main, flags_parser=parse_flags)
