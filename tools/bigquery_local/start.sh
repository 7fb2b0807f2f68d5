#!/usr/bin/env bash
# Runs a local BigQuery (local-bigquery: REST + Storage Read gRPC) and a local GCS
# (gcp-storage-emulator) on 127.0.0.1, in the foreground, until Ctrl-C / SIGTERM.
#
#   tools/bigquery_local/start.sh [--rest-port 9050] [--grpc-port 9060] [--gcs-port 9023]
#                                 [--project local] [--bucket local-bucket] [--data-dir DIR]
#
# Installs them first if needed (install.sh, instant once done). Without --data-dir the data
# lives in a fresh temporary folder that is deleted on exit; with it, the folder is kept.
# The BigQuery server sees the GCS emulator (STORAGE_EMULATOR_HOST), so extract jobs (Beam's
# EXPORT read) write to it and load jobs (Beam's FILE_LOADS) read from it. --bucket is created
# on start. Clients: BIGQUERY_EMULATOR_HOST=http://127.0.0.1:9050,
# STORAGE_EMULATOR_HOST=http://127.0.0.1:9023, Storage Read at 127.0.0.1:9060 (plain gRPC);
# in Python, pipelines.local.bigquery_emulator does all of it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${BIGQUERY_VENV:-$(cd "$HERE/../.." && pwd)/.bigquery-venv}"
REST_PORT=9050 GRPC_PORT=9060 GCS_PORT=9023 PROJECT=local BUCKET=local-bucket DATA_DIR=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rest-port) REST_PORT="$2"; shift 2 ;;
    --grpc-port) GRPC_PORT="$2"; shift 2 ;;
    --gcs-port) GCS_PORT="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --bucket) BUCKET="$2"; shift 2 ;;
    --data-dir) DATA_DIR="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "start.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

BIGQUERY_VENV="$VENV" bash "$HERE/install.sh"

TEMP_DIR=""
if [[ -z "$DATA_DIR" ]]; then
  TEMP_DIR="$(mktemp -d -t bigquery-local.XXXXXX)"
  DATA_DIR="$TEMP_DIR"
fi
mkdir -p "$DATA_DIR/bigquery" "$DATA_DIR/gcs"

pids=()
cleanup() {
  trap - EXIT INT TERM
  set +e
  if [[ ${#pids[@]} -gt 0 ]]; then
    kill "${pids[@]}" 2>/dev/null
    wait "${pids[@]}" 2>/dev/null
  fi
  if [[ -n "$TEMP_DIR" ]]; then rm -rf "$TEMP_DIR"; fi
}
trap cleanup EXIT
trap 'exit 0' INT TERM

# Both servers get HOME inside the venv: that is where install.sh put DuckDB's extensions.
export HOME="$VENV/home" NO_GCE_CHECK=true GCE_METADATA_HOST=127.0.0.1:1

STORAGE_BASE="$DATA_DIR/gcs" "$VENV/bin/gcp-storage-emulator" start --host 127.0.0.1 \
  --port "$GCS_PORT" --default-bucket "$BUCKET" --quiet &
pids+=($!)

STORAGE_EMULATOR_HOST="http://127.0.0.1:$GCS_PORT" "$VENV/bin/local-bigquery" serve \
  --host 127.0.0.1 --port "$REST_PORT" --grpc-port "$GRPC_PORT" --project "$PROJECT" \
  --data-dir "$DATA_DIR/bigquery" &
pids+=($!)

echo "start.sh: BigQuery REST http://127.0.0.1:$REST_PORT, Storage Read gRPC 127.0.0.1:$GRPC_PORT," \
  "GCS http://127.0.0.1:$GCS_PORT (bucket $BUCKET), project $PROJECT, data $DATA_DIR" >&2
# Stop when either server stops (or on a signal, through the traps).
wait -n "${pids[@]}"
