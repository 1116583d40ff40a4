#!/usr/bin/env bash
# Build the manual (docs/, mdBook) and check its links: every page is in docs/src/SUMMARY.md, and
# every relative link in the manual and in README.md, ARCHITECTURE.md and CHANGELOG.md points at a
# page, an #anchor or a repository file that exists (tests/docs/links.py). Runs no SQL: the
# manual's SQL blocks are run by tests/docs/run.sh.
#
#   scripts/docs.sh             # build into docs/book/ (not committed) and check
#
# mdBook is installed by scripts/setup.sh (cargo install, pinned, without its optional features).
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

if ! command -v mdbook >/dev/null; then
    echo "scripts/docs.sh: mdbook is not installed: run scripts/setup.sh first" >&2
    exit 2
fi
say "building the manual with $(mdbook --version) into docs/book/"
rm -rf docs/book
# mdBook reports a missing page or a bad SUMMARY.md as an error (create-missing = false); its
# warnings are errors here too
log=$(mdbook build docs 2>&1) || { printf '%s\n' "$log"; exit 1; }
if grep -q ' WARN \| ERROR ' <<<"$log"; then printf '%s\n' "$log"; echo "scripts/docs.sh: mdbook warned" >&2; exit 1; fi
say "checking links (tests/docs/links.py)"
python3 tests/docs/links.py docs/book docs/src README.md ARCHITECTURE.md CHANGELOG.md
