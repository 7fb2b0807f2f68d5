#!/usr/bin/env bash
# Installs the local BigQuery emulator (local-bigquery, DuckDB inside) and a GCS emulator
# (gcp-storage-emulator) into <repo>/.bigquery-venv, a Python 3.13 venv of their own: the
# project's .venv is Python 3.11, which local-bigquery does not support.
#
# Idempotent: a stamp file (.bigquery-venv/.installed) holds a hash of this script and
# requirements.txt; when it matches, the script exits at once. Otherwise it (re)creates the
# venv if needed, installs the locked set with --no-deps (see requirements.txt for why) and
# copies the DuckDB extensions out of their wheels.
#
# HOME: DuckDB looks for extensions in $HOME/.duckdb/extensions, and the server cannot
# download them offline. So the extensions are installed with HOME=.bigquery-venv/home, and
# start.sh runs the server with that same HOME: install and run never depend on the
# caller's real home directory.
#
# Python 3.13: $BIGQUERY_PYTHON if set, else python3.13 on the PATH if it runs, else
# pyenv's versions/3.13*, else /usr/bin, /usr/local/bin.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${BIGQUERY_VENV:-$ROOT/.bigquery-venv}"
STAMP="$VENV/.installed"
REQUIREMENTS="$HERE/requirements.txt"
EXTENSIONS="icu json parquet avro ducklake fts inet httpfs spatial"

want="$(cat "${BASH_SOURCE[0]}" "$REQUIREMENTS" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  exit 0
fi

mkdir -p "$VENV"
# One installer at a time (parallel test sessions may both find the stamp missing).
if command -v flock >/dev/null; then
  exec 9>"$VENV/.install.lock"
  flock 9
  if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
  fi
fi

find_python() {
  local candidates=()
  [[ -n "${BIGQUERY_PYTHON:-}" ]] && candidates+=("$BIGQUERY_PYTHON")
  candidates+=(python3.13)
  if command -v pyenv >/dev/null; then
    candidates+=("$(pyenv root)"/versions/3.13*/bin/python3.13)
  fi
  candidates+=(/usr/local/bin/python3.13 /usr/bin/python3.13)
  local c
  for c in "${candidates[@]}"; do
    # Print the real interpreter path (a pyenv shim is no good as a venv base).
    if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 13); print(sys.executable)' \
        2>/dev/null; then
      return 0
    fi
  done
  return 1
}

if ! "$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
  PYTHON="$(find_python)" || {
    echo "install.sh: Python 3.13 not found (set BIGQUERY_PYTHON=/path/to/python3.13)" >&2
    exit 1
  }
  echo "install.sh: creating $VENV with $PYTHON" >&2
  rm -rf "$VENV/bin" "$VENV/lib" "$VENV/include" "$VENV/pyvenv.cfg"
  "$PYTHON" -m venv "$VENV"
fi

echo "install.sh: installing $(grep -c '==' "$REQUIREMENTS") pinned packages into $VENV" >&2
if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
    -r "$REQUIREMENTS" >"$VENV/pip.log" 2>&1; then
  # (drop pip's noise about the local index folders that lack a package)
  grep -v "is ignored: it is neither a file nor a directory" "$VENV/pip.log" >&2
  echo "install.sh: pip install failed (log: $VENV/pip.log)" >&2
  exit 1
fi
"$VENV/bin/python" -c 'import local_bigquery.cli, gcp_storage_emulator, duckdb_extensions'

mkdir -p "$VENV/home"
HOME="$VENV/home" "$VENV/bin/python" - $EXTENSIONS <<'PY'
import sys

import duckdb
import duckdb_extensions

for name in sys.argv[1:]:
    duckdb_extensions.import_extension(name, force_install=True)
    duckdb.sql(f"LOAD {name}")  # proves the copy works under this HOME
PY

echo "$want" >"$STAMP"
echo "install.sh: done ($VENV)" >&2
