from absl import app

from ncfm_jax.main import main

app.run(main)
