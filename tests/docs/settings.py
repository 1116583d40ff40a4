#!/usr/bin/env python3
"""Check the settings table of docs/src/configuration.md against pg_settings.

    psql -At -F '|' -c "SELECT name, context FROM pg_settings WHERE name LIKE 'meshhook_keys.%'" \
        | tests/docs/settings.py docs/src/configuration.md

Every meshhook_keys setting the server has is a row of the table (first cell `name`), every row
is a setting the server has, and the row's Context column starts with the server's context
(postmaster, sighup, superuser, ...). Run on a server with the library preloaded (some settings
exist only then). Exit 1 on any difference.
"""
import re
import sys


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    server = dict(line.split("|", 1) for line in sys.stdin.read().split("\n") if "|" in line)
    doc = {}
    with open(argv[1], encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            m = re.match(r"^\|\s*`(meshhook_keys\.[a-z_]+)`\s*\|[^|]*\|\s*([a-z]+)", line)
            if m:
                doc[m.group(1)] = (n, m.group(2))
    errors = []
    for name, context in sorted(server.items()):
        if name not in doc:
            errors.append(f"{name} ({context}) is not in the table")
        elif doc[name][1] != context:
            errors.append(f"line {doc[name][0]}: {name}: context {doc[name][1]}, the server says {context}")
    for name, (n, _) in sorted(doc.items()):
        if name not in server:
            errors.append(f"line {n}: {name} is not a setting of this server")
    for e in errors:
        print(f"  configuration: {argv[1]}: {e}")
    print(f"  configuration: {len(server)} settings on the server, {len(doc)} in the table, {len(errors)} differences")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
