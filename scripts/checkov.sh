#!/usr/bin/env bash
# Static security scan of the Bicep under infra/ with checkov (offline).
#
# checkov pins many packages that would clash with the app's own, so it lives
# in its own virtualenv (.venv/checkov/, inside the git-ignored project venv),
# created here on first use. Override the interpreter with PYTHON=..., the
# version with CHECKOV_VERSION=..., the venv location with CHECKOV_VENV=...
# Extra arguments are passed to checkov (e.g. `scripts/checkov.sh -o json`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CHECKOV_VENV:-$ROOT/.venv/checkov}"
VERSION="${CHECKOV_VERSION:-3.3.30}"
PYTHON="${PYTHON:-python3}"

if ! "$VENV/bin/checkov" --version >/dev/null 2>&1; then
  echo "checkov.sh: installing checkov==$VERSION into $VENV" >&2
  "$PYTHON" -m venv "$VENV"
  # The test suite points SSL_CERT_FILE/REQUESTS_CA_BUNDLE at the Azure stand-in's CA; the package
  # registry needs the system's trust store instead.
  env -u SSL_CERT_FILE -u REQUESTS_CA_BUNDLE -u PIP_CERT \
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==$VERSION" >&2
fi

cd "$ROOT"
exec "$VENV/bin/checkov" -d infra --framework bicep --skip-download --quiet --compact "$@"
