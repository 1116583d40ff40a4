#!/usr/bin/env python3
"""Turn one page of the manual (docs/src/*.md) into the psql script its ```sql blocks make.

    tests/docs/extract.py PAGE.md            # the psql script, on stdout
    tests/docs/extract.py --pages SUMMARY.md # the pages of SUMMARY.md, in its order, one a line

Fences (see docs/src/testing.md, "The manual is tested"):
  ```sql              run as written; any error fails the page
  ```sql,error=42501  run; its last statement must fail with exactly that SQLSTATE, and every
                      statement before it in the block must succeed
  ```sql,norun        not run: only where the text just above it says why ("not run")
  ```sh, ```ini, ```text, ...  never run

The script is one psql script for the whole page, blocks in order, with ON_ERROR_STOP on; each block
is preceded by an \\echo naming its page and line, so a failure can be found in the log. Examples
must use real values: a run block holding an ellipsis, an <angle-bracket placeholder> or a bind
parameter ($1) outside a function body or PREPARE is refused, and so is any fence whose info string
this file does not know.
"""
import re
import sys

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^`\s]*)\s*$")
KNOWN_LANGS = {"sql", "sh", "bash", "ini", "text", "yaml", "toml", "json", "console", "rust", "http", "diff", "conf"}


class DocsError(Exception):
    pass


def blocks(path):
    """Yield (line, lang, attrs, body) for each fenced code block of a markdown file."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.group(1), m.group(2), m.group(3)
        start = i + 1
        body = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence)) and lines[i].strip().strip(fence[0]) == ""):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        if i >= len(lines):
            raise DocsError(f"{path}:{start}: code block never closed")
        i += 1
        parts = info.split(",") if info else [""]
        lang, attrs = parts[0], {}
        for a in parts[1:]:
            k, _, v = a.partition("=")
            attrs[k.strip()] = v.strip()
        yield start, lang, attrs, "\n".join(body), lines[max(0, start - 8):start - 1]


def units(sql):
    """Split psql input into (start offset, kind) units: 'sql' statements (ending with ; or a \\g
    command) and 'meta' backslash commands. Handles quotes, dollar quotes and comments."""
    out = []
    i, n = 0, len(sql)
    stmt_start = None
    while i < n:
        c = sql[i]
        if c in " \t\r\n":
            i += 1
            continue
        if sql.startswith("--", i):
            i = sql.find("\n", i)
            i = n if i < 0 else i
            continue
        if sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            continue
        if c == "\\":
            end = sql.find("\n", i)
            end = n if end < 0 else end
            cmd = sql[i:end].split()[0] if sql[i:end].split() else "\\"
            if stmt_start is not None and cmd.startswith("\\g"):
                stmt_start = None  # \g, \gset, \gx, \gexec end the statement
            elif stmt_start is None:
                out.append((i, "meta"))
            i = end
            continue
        if stmt_start is None:
            stmt_start = i
            out.append((i, "sql"))
        if c == "'" or c == '"':
            q = c
            i += 1
            while i < n:
                if sql[i] == q and i + 1 < n and sql[i + 1] == q:
                    i += 2
                elif sql[i] == q:
                    i += 1
                    break
                else:
                    i += 1
            continue
        if c == "$":
            m = re.match(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$", sql[i:])
            if m and not (i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_")):
                tag = m.group(0)
                end = sql.find(tag, i + len(tag))
                if end < 0:
                    raise DocsError("unterminated dollar quote " + tag)
                i = end + len(tag)
                continue
        if c == ";":
            stmt_start = None
        i += 1
    return out


def strip_quoted(sql):
    """The statement with dollar-quoted bodies and string literals blanked (for the placeholder lint)."""
    sql = re.sub(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$.*?\$\1\$", "$$", sql, flags=re.S)
    return re.sub(r"'(?:[^']|'')*'", "''", sql)


def lint(page, line, body):
    if "\u2026" in body:
        raise DocsError(f"{page}:{line}: an ellipsis in a run block: use real values")
    m = re.search(r"<[a-z_][a-z_0-9:-]*>", body, re.I)
    if m:
        raise DocsError(f"{page}:{line}: placeholder {m.group(0)} in a run block: use real values")
    for off, kind in units(body):
        if kind != "sql":
            continue
        stmt = body[off:]
        if re.match(r"\s*PREPARE\b", stmt, re.I):
            continue
        first = re.split(r";\s*(?:\n|$)", strip_quoted(stmt), maxsplit=1)[0]
        if re.search(r"(?<![A-Za-z0-9_$])\$[0-9]+", first):
            raise DocsError(f"{page}:{line}: a bind parameter ($1) in psql: psql has no value for it; use a real value")


def psql_quote(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def script(page, name):
    out = [
        f"-- generated by tests/docs/extract.py from {name}: do not edit",
        "\\set ON_ERROR_STOP 1",
        "\\set VERBOSITY default",
        "\\set SHOW_CONTEXT errors",
    ]
    n_run = n_err = n_norun = 0
    for line, lang, attrs, body, before in blocks(page):
        where = f"{name}:{line}"
        if lang not in KNOWN_LANGS and lang != "":
            raise DocsError(f"{where}: unknown fence language {lang!r} (see docs/src/testing.md)")
        if "\u2026" in body:
            raise DocsError(f"{where}: an ellipsis in an example: use real values")
        if lang != "sql":
            if attrs:
                raise DocsError(f"{where}: attributes {attrs} on a {lang or 'plain'} block")
            continue
        unknown = set(attrs) - {"error", "norun"}
        if unknown or ("error" in attrs and not re.fullmatch(r"[0-9A-Z]{5}", attrs["error"])) or len(attrs) > 1:
            raise DocsError(f"{where}: bad fence attributes {attrs}: use sql, sql,error=SQLSTATE or sql,norun")
        if "norun" in attrs:
            if not re.search(r"not run", "\n".join(before), re.I):
                raise DocsError(f"{where}: a sql,norun block must follow text that says why it is not run")
            n_norun += 1
            continue
        lint(name, line, body)
        out.append(f"\\echo {psql_quote('>>> ' + where)}")
        if "error" not in attrs:
            n_run += 1
            out.append(body)
            continue
        n_err += 1
        want = attrs["error"]
        us = [u for u in units(body)]
        if not us or us[-1][1] != "sql":
            raise DocsError(f"{where}: an error block must end with the SQL statement that fails")
        head, last = body[:us[-1][0]], body[us[-1][0]:]
        if head.strip():
            out.append(head.rstrip("\n"))
        gate = f"docs_got_{want}"
        out += [
            f"\\unset {gate}",
            "\\set ON_ERROR_STOP 0",
            last.rstrip("\n"),
            "\\set ON_ERROR_STOP 1",
            f"\\set docs_got_:SQLSTATE 1",
            f"\\if :{{?{gate}}}",
            f"\\echo {psql_quote('>>> ' + where + ': failed with ' + want + ' as the page says')}",
            "\\else",
            f"\\warn {psql_quote('DOCS FAILURE ' + where + ': expected SQLSTATE ' + want + ', got')} :SQLSTATE",
            "DO $docs$ BEGIN RAISE EXCEPTION 'docs: a block did not fail as its page says'; END $docs$;",
            "\\endif",
            "\\unset docs_got_:SQLSTATE",
        ]
    out.append(f"\\echo {psql_quote(f'>>> {name}: {n_run} blocks run, {n_err} failed as expected, {n_norun} not run')}")
    return "\n".join(out) + "\n", n_run + n_err


def pages(summary):
    """Pages linked from SUMMARY.md, in order."""
    with open(summary, encoding="utf-8") as f:
        return re.findall(r"\]\(([^)#]+\.md)\)", f.read())


def main(argv):
    if len(argv) == 3 and argv[1] == "--pages":
        print("\n".join(pages(argv[2])))
        return 0
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    name = argv[2] if len(argv) == 3 else argv[1]
    try:
        text, count = script(argv[1], name)
    except DocsError as e:
        print(f"DOCS FAILURE {e}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
