#!/usr/bin/env bash
# Build the manual (docs/, mdBook) and check its links: every page is in docs/src/SUMMARY.md, and
# every relative link in the manual and in README.md, ARCHITECTURE.md and CHANGELOG.md points at a
# page, an #anchor or a repository file that exists (tests/docs/links.py). Runs no SQL: the
# manual's SQL blocks are run by tests/docs/run.sh.
#
#   scripts/docs.sh             # build into docs/book/ (not committed) and check
#
# mdBook is installed here the first time (Debian 12 does not package it): pinned, with cargo,
# without its default features (search index, serve, watch), which building the book does not
# need; about 1.5 minutes on 2 cores. Only the manual needs it, so the demo does not wait for it.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

MDBOOK_VERSION=0.5.4
if [ "$(mdbook --version 2>/dev/null)" != "mdbook v$MDBOOK_VERSION" ]; then
    say "installing mdbook $MDBOOK_VERSION (takes a minute or two the first time)"
    cargo install --locked mdbook --version "$MDBOOK_VERSION" --no-default-features
fi
say "building the manual with $(mdbook --version) into docs/book/"
rm -rf docs/book
# mdBook reports a missing page or a bad SUMMARY.md as an error (create-missing = false); its
# warnings are errors here too
log=$(mdbook build docs 2>&1) || { printf '%s\n' "$log"; exit 1; }
if grep -q ' WARN \| ERROR ' <<<"$log"; then printf '%s\n' "$log"; echo "scripts/docs.sh: mdbook warned" >&2; exit 1; fi
say "checking links (tests/docs/links.py)"
python3 tests/docs/links.py docs/book docs/src README.md ARCHITECTURE.md CHANGELOG.md
