"""The experiment configs: each module is `get_config(arg=None) -> ConfigDict`.

Run one with `python -m ncfm_jax.main --config=configs/NAME.py[:arg]`; installed,
the package ships them as `ncfm_jax.configs` (`config_lib.resolve_config`).
"""
