#!/bin/sh
# Set up everything the tests need, then run the whole suite.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh --test
exec .venv/bin/pytest -q "$@"
