#!/usr/bin/env bash
# Makes crates/warren-bench/peers/.venv with the aio-pika peer's pinned dependencies from PyPI.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python3 -m venv "$here/.venv"
"$here/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
"$here/.venv/bin/python" -c 'import aio_pika, websockets; print("aio-pika", aio_pika.__version__, "websockets", websockets.__version__)'
