#!/usr/bin/env python3
"""The Rust doc comment of every SQL-callable function says who may call it, as its COMMENT does.

Every COMMENT ON FUNCTION, PROCEDURE and VIEW in sql/finalize.sql ends with one sentence naming who
may call it (the grammar is at the top of its Documentation section); tests/pg_regress/sql/
privileges.sql checks those sentences against the grants and the behaviour. This lint keeps the
`///` comment of each `#[pg_extern]` / `#[pg_trigger]` function in src/ saying the same: its last
sentence must be the same sentence, word for word (one source of truth, repeated, and checked).
Plain V1 functions (`#[unsafe(no_mangle)]` ... `fn <name>_wrapper(fcinfo`, declared in
extension_sql!) count as <name>; their doc comment ends with a `SQL:` line, which is not read.
Exit status 1 if anything is reported. Usage: access_sentences.py [REPO_ROOT]
"""
import pathlib
import re
import sys

ROLE = r"meshhook_keys_(?:user|operator|custodian)"
SENTENCE = re.compile(
    rf"(Requires {ROLE}(?: or {ROLE})?(?:; [^;]*)?\."
    r"|Executable by PUBLIC; [^;]*\."
    r"|Executable only by the extension's owner\.)$"
)
COMMENT = re.compile(
    r"^COMMENT ON (?:FUNCTION|PROCEDURE) meshhook_keys\.(\w+)\([^)]*\) IS\s*'((?:[^']|'')*)';",
    re.M,
)
EXTERN = re.compile(r"#\[pg_(?:extern|trigger)\b([^\]]*)\]")
V1 = re.compile(r"#\[unsafe\(no_mangle\)\]")
V1_FN = re.compile(r"\bfn\s+(\w+)_wrapper\(\s*(?:$|fcinfo)")
FN = re.compile(r"\bfn\s+(\w+)")


def sentence(text):
    """The last sentence, if it is one of the grammar's; text is whitespace-normalised first."""
    text = " ".join(text.split())
    start = text.rfind("Requires ")
    if start < 0:
        start = text.rfind("Executable ")
    m = SENTENCE.search(text[start:]) if start >= 0 else None
    return m.group(1) if m and m.start() == 0 else None


def sql_sentences(root):
    text = (root / "sql" / "finalize.sql").read_text()
    return {name: sentence(body.replace("''", "'")) for name, body in COMMENT.findall(text)}


def doc_above(lines, i):
    """The `///` comment above line i (attribute lines among it skipped), up to a `SQL:` line."""
    doc = []
    j = i - 1
    while j >= 0 and (lines[j].strip().startswith("#[") or lines[j].strip().startswith("///")):
        if lines[j].strip().startswith("///"):
            doc.insert(0, lines[j].strip()[3:].strip())
        j -= 1
    sql = next((k for k, d in enumerate(doc) if d.startswith("SQL:")), len(doc))
    return " ".join(doc[:sql])


def rust_functions(root):
    """(file, line, fn name, doc text) of each function exposed to SQL."""
    for path in sorted((root / "src").rglob("*.rs")):
        if "tests" in path.parts:
            continue
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            v1 = V1.match(line.strip()) and i + 1 < len(lines) and V1_FN.search(lines[i + 1])
            if v1:
                yield path.relative_to(root), i + 1, v1.group(1), doc_above(lines, i)
                continue
            m = EXTERN.match(line.strip())
            if not m or "sql = false" in m.group(1):
                continue
            k = i
            while k < len(lines) and not FN.search(lines[k]):
                k += 1
            yield path.relative_to(root), i + 1, FN.search(lines[k]).group(1), doc_above(lines, i)


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    sql = sql_sentences(root)
    bad = 0
    for path, line, name, doc in rust_functions(root):
        rust = sentence(doc)
        if name not in sql:
            print(f"{path}:{line}: {name} has no COMMENT ON FUNCTION in sql/finalize.sql")
            bad += 1
        elif sql[name] is None:
            print(f"{path}:{line}: the COMMENT of {name} does not end with who may call it")
            bad += 1
        elif rust != sql[name]:
            print(f"{path}:{line}: the doc comment of {name} says {rust!r}, its COMMENT {sql[name]!r}")
            bad += 1
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
