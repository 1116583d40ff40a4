#!/usr/bin/env python3
"""Every operator and function in the SQL that meshhook_keys runs is schema-qualified.

Scans the SQL in the Rust sources (string literals that hold a statement) and reports each operator
not written OPERATOR(pg_catalog.x) and each function call without a schema, so that even a
search_path a foreign caller polluted resolves nothing of theirs (THREAT-MODEL.md, issue 23).
Exit status 1 if anything is reported. Usage: qualified_sql.py [SRC_DIR]
"""
import pathlib
import re
import sys

# Words that are followed by "(" in SQL without being function calls.
KEYWORDS = set("""
select from where and or not in any all some exists values array row coalesce nullif greatest least
cast extract filter over as on using join lateral with ordinality operator case when then else end
into returning update set insert delete conflict do nothing limit order by group having distinct
union intersect except table interval is null true false left right inner outer cross full
position substring overlay trim collate between like ilike similar for share key no lock skip
locked nowait only default primary references check unique constraint create alter drop grant
revoke to function returns language immutable stable volatile strict security definer invoker
""".split())
LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
STATEMENT = re.compile(r"\b(SELECT|UPDATE|INSERT|DELETE)\b")


def problems(sql):
    t = re.sub(r"'(?:[^']|'')*'", "''", sql)                 # SQL string literals
    t = re.sub(r"\$\$.*?\$\$", "''", t, flags=re.S)           # dollar-quoted literals
    t = re.sub(r"\{[a-z_]*\}", " x ", t)                     # format! placeholders
    t = re.sub(r"OPERATOR\(pg_catalog\.[^)]*\)", " ", t)
    t = re.sub(r"::\s*[a-z_.]+(\[\])?", " ", t)              # casts
    t = re.sub(r"=>", " ", t)                                # named arguments
    t = re.sub(r"\b(AS|JOIN)\s+[a-z_]+\s*\([a-z_, ]*\)", " ", t)   # aliases with column lists
    # assignments of UPDATE ... SET and ON CONFLICT ... DO UPDATE SET
    t = re.sub(r"(\bSET\b|,)\s*([a-z_]+)\s*=", r"\1 \2 ", t)
    out = []
    for op in re.findall(r"(<>|<=|>=|!=|\|\||[=<>+*/~-])", t):
        if op == "*" and re.search(r"\(\s*\*\s*\)|SELECT\s+\*|\.\*", t):
            continue
        out.append(f"operator {op}")
    for m in re.finditer(r"(?<![.\w])([A-Za-z_][A-Za-z0-9_]*)\s*\(", t):
        name = m.group(1)
        if name.lower() not in KEYWORDS:
            out.append(f"function {name}(")
    return out


def main():
    src = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "src")
    bad = 0
    for f in sorted(src.rglob("*.rs")):
        # (the in-process tests' own SQL runs as the test, not as meshhook_keys)
        # (error.rs holds messages and hints that quote SQL for the reader, never run)
        if "tests" in f.relative_to(src).parts or f.name == "error.rs":
            continue
        text = f.read_text()
        for m in LITERAL.finditer(text):
            if not STATEMENT.search(m.group(1)):
                continue
            found = problems(m.group(1))
            if found:
                line = text[: m.start()].count("\n") + 1
                bad += len(found)
                print(f"{f}:{line}: {', '.join(sorted(set(found)))}")
    print(f"{bad} unqualified operators and functions", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
