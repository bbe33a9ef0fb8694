#!/usr/bin/env bash
# Prints a Python 3.12+ interpreter (Lambda runs python3.12). Prefers pyenv's 3.12, then 3.13.
set -euo pipefail
for candidate in python3.12 python3.13; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys' 2>/dev/null; then
    command -v "$candidate"; exit 0
  fi
done
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for v in 3.12 3.13; do
    for p in "$root"/versions/"$v".*/bin/python"$v"; do
      [ -x "$p" ] && { echo "$p"; exit 0; }
    done
  done
fi
if python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
  command -v python3; exit 0
fi
echo "sendonce needs Python 3.12 or newer (pyenv install 3.12)" >&2
exit 1
