"""The translation template of the plugin, and the check that every string the analyst reads is translatable.

    python scripts/update_translations.py            # rewrite mtp_qgis/i18n/mtp_qgis.ts from the tr("...") calls
    python scripts/update_translations.py --check    # exit 1 if the template is stale or a string escapes tr()

Translators open the .ts in Qt Linguist; `lrelease mtp_qgis_de.ts` makes the .qm the plugin loads. Strings are
found by reading the code (ast), like pylupdate does: tr() takes a literal, and values go in with .format().
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "mtp_qgis"
TEMPLATE = PLUGIN / "i18n" / "mtp_qgis.ts"
CONTEXT = "mtp_qgis"
# Calls whose string arguments the analyst reads, and the positions of those arguments (None: all).
SHOWN_CALLS = {
    "QLabel": (0,), "QPushButton": (0,), "QCheckBox": (0,), "QAction": (1,), "QTreeWidgetItem": None,
    "setText": (0,), "setToolTip": (0,), "setPlaceholderText": (0,), "setSpecialValueText": (0,),
    "setWindowTitle": (0,), "addItem": (0,), "addRow": (0,), "addTab": (1,), "setHeaderLabels": None,
    "pushInfo": (0,), "pushWarning": (0,), "reportError": (0,), "set_status": (0,), "setSuffix": (0,),
    "getOpenFileName": (1, 3), "QgsProcessingException": (0,), "BackendError": (0,),
    "BackendNotInstalled": (0,), "BackendUnreachable": (0,), "BackendAuthError": (0,),
}
SHOWN_RETURNS = {"displayName", "group", "shortHelpString", "longName", "_fields_help"}
PARAMETER_PREFIX = "QgsProcessingParameter"  # their 2nd argument is the label


def _name(func: ast.AST) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _is_text(node: ast.AST) -> bool:
    """A literal with letters in it, or an f-string: text a person reads."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.Constant) and any(c.isalpha() for c in str(v.value)) for v in node.values)
    if isinstance(node, ast.BinOp):
        return _is_text(node.left) or _is_text(node.right)
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and any(c.isalpha() for c in node.value)


def scan(path: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """(translatable strings with their line, problems) of one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = path.relative_to(REPO)
    strings, problems = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _name(node.func) == "tr":
            if len(node.args) != 1 or not (isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                problems.append(f"{rel}:{node.lineno}: tr() needs one string literal (put values in with .format())")
            else:
                strings.append((node.args[0].value, node.lineno))
        if isinstance(node, ast.Call):
            name = _name(node.func)
            positions = (1,) if name.startswith(PARAMETER_PREFIX) else SHOWN_CALLS.get(name, ())
            args = node.args if positions is None else [node.args[i] for i in positions if i < len(node.args)]
            for arg in args:
                if _is_text(arg):
                    problems.append(f"{rel}:{arg.lineno}: text shown to the analyst must go through tr(): "
                                    f"{ast.unparse(arg)[:70]}")
        if isinstance(node, ast.FunctionDef) and node.name in SHOWN_RETURNS:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Return) and inner.value is not None and _is_text(inner.value):
                    problems.append(f"{rel}:{inner.lineno}: {node.name}() must return tr(...)")
    return strings, problems


def collect() -> tuple[dict[str, list[str]], list[str]]:
    messages: dict[str, list[str]] = {}
    problems: list[str] = []
    for path in sorted(PLUGIN.rglob("*.py")):
        if path.name == "backend_installer.py":
            continue  # runs outside QGIS too (a shell); its messages are the installer log's
        strings, found = scan(path)
        problems += found
        for text, line in strings:
            messages.setdefault(text, []).append(f"{path.relative_to(PLUGIN).as_posix()}:{line}")
    return messages, problems


def template(messages: dict[str, list[str]]) -> str:
    lines = ['<?xml version="1.0" encoding="utf-8"?>', "<!DOCTYPE TS>", '<TS version="2.1">', "<context>",
             f"    <name>{CONTEXT}</name>"]
    for text in sorted(messages):
        lines.append("    <message>")
        # Files only, no line numbers: the template changes when a text does, not when code moves.
        for file in sorted({where.rsplit(":", 1)[0] for where in messages[text]}):
            lines.append(f'        <location filename="../{file}"/>')
        lines.append(f"        <source>{escape(text)}</source>")
        lines.append('        <translation type="unfinished"></translation>')
        lines.append("    </message>")
    lines += ["</context>", "</TS>", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    messages, problems = collect()
    text = template(messages)
    if args.check:
        stale = not TEMPLATE.is_file() or TEMPLATE.read_text(encoding="utf-8") != text
        if stale:
            problems.append(f"{TEMPLATE.relative_to(REPO)} is stale: run python scripts/update_translations.py")
        print("\n".join(problems))
        return 1 if problems else 0
    TEMPLATE.write_text(text, encoding="utf-8")
    print(f"{TEMPLATE.relative_to(REPO)}: {len(messages)} messages")
    print("\n".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
