#!/usr/bin/env python3
"""Broken-link check for the manual and the README (run by scripts/docs.sh after mdbook build).

    tests/docs/links.py BOOK_HTML_DIR docs/src README.md [more.md ...]

- Every page in docs/src is in SUMMARY.md, and every page SUMMARY.md names exists.
- Every relative link in a page (or in the other markdown files given) points at a file or folder
  that exists (pages of the manual, or files of the repository such as ../../scripts/demo.sql).
- Every #anchor exists: in a page of the manual, among the ids of the HTML page mdBook built from it
  (so exactly what a reader's browser finds); in any other markdown file, among its headings as
  GitHub names them.
Links to other sites are not fetched (there is no network in CI). Code blocks and code spans are
skipped. Exit 1 on any broken link.
"""
import os
import re
import sys

LINK = re.compile(r"(?<!\!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMG = re.compile(r"\!\[[^\]]*\]\(([^)\s]+)\)")
REFDEF = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.M)


def strip_code(text):
    """Markdown without fenced code blocks and code spans (their brackets are not links)."""
    out, fence = [], None
    for line in text.split("\n"):
        m = re.match(r"^\s*(`{3,}|~{3,})", line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            out.append("")
            continue
        if m:
            fence = m.group(1)
            out.append("")
            continue
        out.append(re.sub(r"(`+)(?:(?!\1).)+?\1", "``", line))
    return "\n".join(out)


def github_slugs(text):
    slugs, seen = set(), {}
    for line in strip_code(text).split("\n"):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        title = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda mm: mm.group(1) or "", m.group(1))
        s = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(s, 0)
        seen[s] = n + 1
        slugs.add(s if n == 0 else f"{s}-{n}")
    return slugs


def html_ids(path):
    with open(path, encoding="utf-8") as f:
        return set(re.findall(r'\bid="([^"]+)"', f.read()))


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    book, src, others = os.path.abspath(argv[1]), os.path.abspath(argv[2]), [os.path.abspath(p) for p in argv[3:]]
    errors = []
    pages = sorted(os.path.relpath(os.path.join(d, f), src)
                   for d, _, fs in os.walk(src) for f in fs if f.endswith(".md"))
    with open(os.path.join(src, "SUMMARY.md"), encoding="utf-8") as f:
        listed = re.findall(r"\]\(([^)#]+\.md)\)", f.read())
    for p in pages:
        if p != "SUMMARY.md" and p not in listed:
            errors.append(f"docs/src/{p}: not in SUMMARY.md")
    for p in listed:
        if p not in pages:
            errors.append(f"docs/src/SUMMARY.md: lists {p}, which does not exist")

    def anchors_of(target):
        if target.startswith(src + os.sep) and target.endswith(".md"):
            html = os.path.join(book, os.path.relpath(target, src)[:-3] + ".html")
            if os.path.basename(target) == "SUMMARY.md" or not os.path.exists(html):
                return None
            return html_ids(html)
        if target.endswith(".md"):
            with open(target, encoding="utf-8") as f:
                return github_slugs(f.read())
        return set()

    files = [os.path.join(src, p) for p in pages] + others
    checked = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            text = strip_code(f.read())
        targets = LINK.findall(text) + IMG.findall(text) + REFDEF.findall(text)
        for t in targets:
            if re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I):
                continue  # http:, https:, mailto: (not fetched)
            checked += 1
            where = os.path.relpath(path)
            file_part, _, anchor = t.partition("#")
            target = path if not file_part else os.path.normpath(os.path.join(os.path.dirname(path), file_part))
            if not os.path.exists(target):
                errors.append(f"{where}: link to {t}: {os.path.relpath(target)} does not exist")
                continue
            if anchor:
                ids = anchors_of(target)
                if ids is None:
                    errors.append(f"{where}: link to {t}: no built page for {os.path.relpath(target)}")
                elif anchor not in ids:
                    errors.append(f"{where}: link to {t}: no #{anchor} in {os.path.relpath(target)}")
    for e in errors:
        print("  broken link: " + e)
    print(f"links: {checked} relative links in {len(files)} files checked, {len(errors)} broken")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
