#!/usr/bin/env python3
"""Checks the crate's structure (part of the test command):

1. No import cycle between any two modules, at any level: the graph of "module A names an item
   of module B" (through `use`, paths in code and `pub use` re-exports, each resolved to the module
   that defines the item) has no cycle. Test code (`tests.rs` files and `#[cfg(test)] mod tests`
   blocks) is left out: tests may reach into the module they test.
2. The top-level modules form the layers listed in LAYERS: a module names only modules of the
   layers before its own.
3. Room sizes: no source file over MAX_FILE_LINES lines (test code excluded), no function over
   MAX_FN_LINES lines.

Usage: scripts/check-layers.py [--graph]   (--graph prints every edge)
Exit status 1 with the reasons when a rule is broken.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

# Lowest first: each may use only those before it.
LAYERS = [
    ["clock", "health", "dashboard", "telemetry"],
    ["config"],
    ["event"],
    ["rollup"],
    ["storage"],
    ["ingest", "auth"],
    ["rebuild"],
    ["api", "server"],
    ["app"],
    ["cli"],
]
MAX_FILE_LINES = 600
MAX_FN_LINES = 80

ITEM_RE = re.compile(
    r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:async\s+|const\s+|unsafe\s+)*"
    r"(?:fn|struct|enum|trait|type|const|static|mod|macro_rules!|union)\s+([A-Za-z_][A-Za-z0-9_]*)",
    re.M,
)


def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def blank_literals(text):
    """Comments, string and char literals emptied (newlines kept), so braces inside them do not
    count and paths inside them are not references."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j == -1 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j == -1 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif re.match(r'b?r(#*)"', text[i : i + 20]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'b?r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j == -1 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x[0-9a-fA-F]{2}'", text[i:]):
            m = re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x[0-9a-fA-F]{2}'", text[i:])
            out.append("' '")
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def strip_tests(text):
    """Removes `#[cfg(test)]` items (a `mod tests { … }` block, or `mod tests;`), comments and
    literals."""
    text = blank_literals(text)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        j = m.end()
        # The item: up to its `;` or its matching closing brace.
        semi, brace = text.find(";", j), text.find("{", j)
        if brace == -1 or (semi != -1 and semi < brace):
            i = semi + 1
            continue
        depth, k = 0, brace
        while k < len(text):
            if text[k] == "{":
                depth += 1
            elif text[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        i = k + 1
    out.append(text[i:])
    return "".join(out)


def expand_use(tree):
    """`a::{b, c::{d, e}}` → ['a::b', 'a::c::d', 'a::c::e'] (aliases are removed before)."""
    tree = re.sub(r"\s+", "", tree)
    m = re.match(r"^(.*?)\{(.*)\}$", tree)
    if not m:
        return [tree]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    res = []
    for p in parts:
        if p:
            res.extend(expand_use(prefix + p))
    return res


def uses_of(text):
    """Every `use` path (expanded) and whether it is a `pub use` re-export."""
    found = []
    for m in re.finditer(r"(?m)^\s*(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", text):
        body = re.sub(r"\s+as\s+\w+", "", m.group(2))
        for p in expand_use(body):
            found.append((p, bool(m.group(1))))
    return found


def main():
    files = {}
    for dirpath, _, names in os.walk(ROOT):
        for n in names:
            if n.endswith(".rs") and n != "tests.rs" and n != "main.rs":
                p = os.path.join(dirpath, n)
                files[module_of(p)] = p
    modules = set(files)
    texts = {m: strip_tests(open(p, encoding="utf-8").read()) for m, p in files.items()}
    defined = {m: set(ITEM_RE.findall(t)) for m, t in texts.items()}
    reexports = {m: {} for m in modules}  # module -> name -> absolute path it re-exports
    problems = []

    def absolute(mod, path):
        parts = path.split("::")
        if parts[0] == "crate":
            return parts[1:]
        base = list(mod)
        if parts[0] == "self":
            return base + parts[1:]
        while parts and parts[0] == "super":
            base = base[:-1]
            parts = parts[1:]
        if path.startswith("super"):
            return base + parts
        if tuple(mod) + (parts[0],) in modules:
            return list(mod) + parts  # a child module, named relatively
        return None  # an external crate

    def resolve(parts, seen=()):
        """The module defining the item named by absolute `parts`."""
        for k in range(len(parts), -1, -1):
            head = tuple(parts[:k])
            if head in modules:
                if k == len(parts):
                    return head
                name = parts[k]
                if name in reexports[head] and (head, name) not in seen:
                    return resolve(reexports[head][name], seen + ((head, name),))
                return head
        return None

    uses = {m: uses_of(t) for m, t in texts.items()}
    for m, us in uses.items():
        for p, public in us:
            a = absolute(m, p)
            if a is not None and public and a:
                reexports[m][a[-1]] = a
    edges = {m: set() for m in modules}
    for m, t in texts.items():
        paths = [p for p, _ in uses[m]]
        code = re.sub(r"(?m)^\s*(pub(?:\([^)]*\))?\s+)?use\s+[^;]+;", "", t)
        paths += re.findall(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)", code)
        # Paths starting with a child module's name (`sqlite::SqliteStore::open`).
        for p in re.findall(r"(?<![\w:])([a-z_][a-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)+)", code):
            if m + (p.split("::")[0],) in modules:
                paths.append(p)
        for p in paths:
            a = absolute(m, p)
            if a is None:
                continue
            target = resolve(a)
            if target is not None and target != m:
                edges[m].add(target)

    # 1. cycles
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for t in sorted(edges[n]):
            if state.get(t) == 1:
                cyc = stack[stack.index(t) :] + [t]
                problems.append("import cycle: " + " -> ".join("::".join(x) or "crate" for x in cyc))
            elif t not in state:
                visit(t)
        stack.pop()
        state[n] = 2

    for n in sorted(modules):
        if n not in state:
            visit(n)

    # 2. layers
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    for m in modules:
        if not m:
            continue
        if m[0] not in layer:
            problems.append(f"top-level module {m[0]} is in no layer of scripts/check-layers.py")
            continue
        for t in edges[m]:
            if t and t[0] != m[0] and layer.get(t[0], -1) >= layer[m[0]]:
                problems.append(f"layering: {'::'.join(m)} uses {'::'.join(t)} (a layer not below its own)")

    # 3. sizes
    for m, p in files.items():
        text = texts[m]
        n = text.count("\n")
        if n > MAX_FILE_LINES:
            problems.append(f"{os.path.relpath(p, ROOT + '/..')}: {n} lines (more than {MAX_FILE_LINES})")
        for fm in re.finditer(r"(?m)^(\s*)(?:pub(?:\([^)]*\))?\s+)?(?:async\s+|const\s+)*fn\s+(\w+)[^{;]*\{", text):
            depth, k = 0, fm.end() - 1
            while k < len(text):
                depth += text[k] == "{"
                depth -= text[k] == "}"
                if depth == 0:
                    break
                k += 1
            lines = text[fm.start() : k].count("\n") + 1
            if lines > MAX_FN_LINES:
                problems.append(f"{os.path.relpath(p, ROOT + '/..')}: fn {fm.group(2)} is {lines} lines (more than {MAX_FN_LINES})")

    if "--graph" in sys.argv:
        for m in sorted(modules):
            for t in sorted(edges[m]):
                print(f"{'::'.join(m) or 'crate'} -> {'::'.join(t) or 'crate'}")
    if problems:
        print("check-layers: the structure rules are broken:", file=sys.stderr)
        for pr in sorted(set(problems)):
            print("  - " + pr, file=sys.stderr)
        return 1
    print(f"check-layers: {len(modules)} modules, {sum(len(e) for e in edges.values())} edges, no cycle, layers and sizes ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
