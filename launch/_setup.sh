# Shared set-up for launch/*.sh: a .venv with the package and the given extras,
# plus Fashion-MNIST from Debian when apt is available. Idempotent: a stamp file
# holding the hash of pyproject.toml + extras skips pip when nothing changed.
# Usage (sourced): EXTRAS="test" source launch/_setup.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.installed-${EXTRAS:-base}"
want="$(cat pyproject.toml; echo "extras=${EXTRAS:-}")"
want_hash="$(printf '%s' "$want" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want_hash" ]; then
  echo "[setup] installing ncfm-jax${EXTRAS:+[$EXTRAS]} into $VENV (first run takes a few minutes)"
  log="$VENV/pip-install.log"
  if ! { "$VENV/bin/python" -m pip install --upgrade pip \
         && "$VENV/bin/python" -m pip install -e ".${EXTRAS:+[$EXTRAS]}"; } >"$log" 2>&1; then
    tail -n 30 "$log"
    echo "[setup] ERROR: pip install failed; full log in $log" >&2
    exit 1
  fi
  echo "$want_hash" > "$stamp"
else
  # Editable install: source changes need no reinstall.
  echo "[setup] $VENV is up to date"
fi

# Debian packages: the Fashion-MNIST IDX files, and tcmalloc (XLA:CPU steps run
# ~25% faster with it; ncfm_jax/allocator.py). Missing ones are installed when
# apt-get is available and we are root; otherwise say what to run.
apt_missing=()
FMNIST_DIR=/usr/share/datasets/fashion-mnist
[ -d "$FMNIST_DIR" ] || apt_missing+=(dataset-fashion-mnist)
compgen -G "/usr/lib/*/libtcmalloc_minimal.so.4" >/dev/null || apt_missing+=(libtcmalloc-minimal4)
if [ ${#apt_missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian packages: ${apt_missing[*]}"
    (apt-get install -y -qq "${apt_missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "${apt_missing[@]}" >/dev/null; }) \
      || echo "[setup] WARNING: could not install ${apt_missing[*]}; Fashion-MNIST tests are skipped without the data, CPU runs are slower without tcmalloc"
  else
    echo "[setup] NOTE: missing ${apt_missing[*]} and apt-get unavailable (or not root): run 'sudo apt-get install ${apt_missing[*]}'"
  fi
fi
