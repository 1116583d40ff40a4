#!/usr/bin/env python3
"""Check docs/src/reference.md against the catalog of a fresh install.

    psql ... -f tests/docs/catalog.sql | tests/docs/reference.py docs/src/reference.md

The reference is read from its markdown tables whose header starts `| Function | Who may call |`.
The first cell of each row is a code span: `name(arguments) → result` for a function,
`CALL name(arguments)` for a procedure, or view/table followed by `name (columns)`.

Checked, always (exit 1 on any failure):
  - every function, procedure, view and table of schema meshhook_keys has a row, and every row names
    an object that exists;
  - a function's arguments (names, types, defaults) and result are the catalog's; a view's or table's
    column names are the catalog's, in order;
  - every role the "Who may call" cell names may really use the object (EXECUTE or SELECT, through
    membership too).
Checked against each object's COMMENT (obj_description): the roles the "Who may call" cell names
(meshhook_keys_user / _operator / _admin / _service, superuser) are the roles the comment requires:
its "Requires ..." sentence if it has one, else every such role it mentions. Internal objects
(names starting with _, or a comment starting "Internal") are exempt. With MESHHOOK_KEYS_DOCS_ROLE_CHECK=warn a mismatch is
reported but does not fail (until the comments name their roles in one standard sentence).
meshhook_keys_admin named beside meshhook_keys_user or _operator adds nothing (it is a member of both).
"""
import json
import os
import re
import sys

ROLE = re.compile(r"\b(meshhook_keys_(?:user|operator|admin|service|custodian)|superuser)\b")
TYPE_ALIASES = [
    (r"\btimestamp with time zone\b", "timestamptz"),
    (r"\bcharacter varying\b", "varchar"),
    (r"\bint4\b", "integer"),
    (r"\bint8\b", "bigint"),
    (r"\bbool\b", "boolean"),
    (r"\bfloat8\b", "double precision"),
]


def norm(s):
    """Arguments or a result type, in one spelling: casts on defaults dropped, aliases unified."""
    if s is None:
        return ""
    s = s.replace("→", "").strip()
    s = re.sub(r"('(?:[^']|'')*'|NULL|\d+)::[a-z][a-z ]*(\[\])?", r"\1", s)
    for pat, rep in TYPE_ALIASES:
        s = re.sub(pat, rep, s)
    s = re.sub(r"\s*([(),])\s*", r"\1", s)
    s = re.sub(r"\s+", " ", s)
    return s.strip()


def outer_parens(s):
    """(before, inside, after) of the first balanced parenthesised group of s."""
    start = s.find("(")
    if start < 0:
        return s, None, ""
    depth = 0
    for i in range(start, len(s)):
        if s[i] == "(":
            depth += 1
        elif s[i] == ")":
            depth -= 1
            if depth == 0:
                return s[:start], s[start + 1:i], s[i + 1:]
    raise ValueError("unbalanced parentheses in " + s)


def split_args(s):
    """Split an argument list on its top-level commas (defaults may hold commas in quotes)."""
    out, cur, depth, quote = [], "", 0, False
    for ch in s:
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        if ch == "," and depth == 0 and not quote:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def split_row(line):
    cells, cur, in_code = [], "", False
    for ch in line.strip().strip("|"):
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(cur.strip())
            cur = ""
        else:
            cur += ch
    cells.append(cur.strip())
    return [c.replace("\\|", "|") for c in cells]


def read_reference(path):
    rows = []
    in_table = False
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.lstrip().startswith("|"):
                in_table = False
                continue
            cells = split_row(line)
            if len(cells) >= 3 and cells[0] == "Function" and cells[1] == "Who may call":
                in_table = True
                continue
            if not in_table or re.fullmatch(r"[-: |]+", line.strip()):
                continue
            m = re.match(r"^(view|table)?\s*`([^`]*)`", cells[0])
            if not m:
                rows.append({"line": n, "error": f"first cell is not a code span: {cells[0]!r}"})
                continue
            kind_word, code = m.group(1), m.group(2).strip()
            who = cells[1]
            if kind_word:
                before, inside, _ = outer_parens(code)
                rows.append({"line": n, "kind": kind_word, "name": before.strip(), "cols": inside, "who": who})
                continue
            kind = "function"
            if code.startswith("CALL "):
                kind, code = "procedure", code[5:]
            before, inside, after = outer_parens(code)
            if inside is None:
                rows.append({"line": n, "error": f"no argument list in {code!r}"})
                continue
            rows.append({"line": n, "kind": kind, "name": before.strip(), "args": inside,
                         "result": after.replace("→", "").strip() or None, "who": who})
    return rows


def comparable(roles):
    """meshhook_keys_admin is a member of both other roles: named beside one of them, it adds
    nothing ("Requires meshhook_keys_operator (meshhook_keys_admin is a member)")."""
    if "meshhook_keys_admin" in roles and roles & {"meshhook_keys_user", "meshhook_keys_operator"}:
        return roles - {"meshhook_keys_admin"}
    return roles


def comment_roles(comment):
    if not comment:
        return set()
    req = re.findall(r"\bRequires\b([^.]*)\.", comment)
    text = " ".join(req) if req else comment
    return comparable({r for r in ROLE.findall(text) if req or r != "meshhook_keys_service"})


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    raw = sys.stdin.read().strip()
    catalog = json.loads(raw) if raw else []
    if not catalog:
        print("reference check: the catalog is empty (is the extension installed?)")
        return 1
    rows = read_reference(argv[1])
    page = os.path.relpath(argv[1])
    warn_only = os.environ.get("MESHHOOK_KEYS_DOCS_ROLE_CHECK", "") == "warn"
    errors, role_issues = [], []
    for r in rows:
        if "error" in r:
            errors.append(f"{page}:{r['line']}: {r['error']}")
    rows = [r for r in rows if "error" not in r]

    for o in catalog:
        if o["kind"] in ("function", "procedure") and o["args"]:
            # OUT parameters are the result (a record), IN is the default mode
            args = split_args(o["args"])
            outs = [a[4:] for a in args if a.startswith("OUT ")]
            o["args"] = ", ".join(a[3:] if a.startswith("IN ") else a for a in args if not a.startswith("OUT "))
            if outs and o["result"] == "record":
                o["result"] = "(" + ", ".join(outs) + ")"
    by_name = {}
    for o in catalog:
        by_name.setdefault((o["kind"], o["name"]), []).append(o)
    seen = set()
    for r in rows:
        key = (r["kind"], r["name"])
        objs = by_name.get(key)
        where = f"{page}:{r['line']}: {r['kind']} {r['name']}"
        if not objs:
            errors.append(f"{where}: no such {r['kind']} in schema meshhook_keys")
            continue
        if r["kind"] in ("view", "table"):
            obj = objs[0]
            if r.get("cols") is not None:
                doc_cols = [c.strip().split()[0] for c in r["cols"].split(",") if c.strip()]
                cat_cols = [c.strip().split()[0] for c in obj["args"].split(",")]
                if doc_cols != cat_cols:
                    errors.append(f"{where}: columns {doc_cols}, the catalog has {cat_cols}")
        else:
            match = [o for o in objs if norm(o["args"]) == norm(r["args"])]
            if not match:
                errors.append(f"{where}: arguments ({r['args']}), the catalog has "
                              + " or ".join(f"({o['args']})" for o in objs))
                continue
            obj = match[0]
            if r["kind"] == "function" and norm(r["result"]) != norm(obj["result"]):
                errors.append(f"{where}: result {r['result']!r}, the catalog has {obj['result']!r}")
        seen.add((obj["kind"], obj["name"], obj["identity_args"]))
        doc_roles = set(ROLE.findall(r["who"]))
        for role in sorted(doc_roles - {"superuser"}):
            if role not in obj["usable_by"]:
                errors.append(f"{where}: the reference says {role} may call it, but {role} has no privilege on it")
        if obj["name"].startswith("_") or (obj["comment"] or "").startswith("Internal"):
            continue
        want = comment_roles(obj["comment"])
        if comparable(doc_roles) != want:
            role_issues.append(f"{where}: the reference names {sorted(doc_roles) or 'no role'}, "
                               f"its COMMENT {sorted(want) or 'no role'} ({(obj['comment'] or '')[-60:]!r})")
    for o in catalog:
        if (o["kind"], o["name"], o["identity_args"]) not in seen:
            sig = f"({o['identity_args']})" if o["kind"] in ("function", "procedure") else ""
            errors.append(f"{page}: {o['kind']} {o['name']}{sig} is not in the reference")

    for e in errors:
        print("  reference: " + e)
    for e in role_issues:
        print(("  reference (role, warning): " if warn_only else "  reference (role): ") + e)
    print(f"  reference: {len(rows)} rows, {len(catalog)} catalog objects, {len(errors)} errors, "
          f"{len(role_issues)} role mismatches{' (MESHHOOK_KEYS_DOCS_ROLE_CHECK=warn: not failing)' if warn_only and role_issues else ''}")
    return 1 if errors or (role_issues and not warn_only) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
