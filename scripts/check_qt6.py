"""Check Python sources against the rules of QGIS's PyQt5 → PyQt6 migration script, in check mode.

QGIS ships that script in its source tree (scripts/pyqt5_to_pyqt6/pyqt5_to_pyqt6.py, run before a plugin
declares `supportsQt6=True`); it is not on PyPI for the Python here, so these are our own checks of the same
rules. Each finding is `file:line: what to write instead`:

- PyQt imports go through `qgis.PyQt` (never `PyQt5`/`PyQt6`, nor the removed `qgis.PyQt.Qt`);
- enum members are reached through their enum (`Qt.AlignmentFlag.AlignLeft`, not `Qt.AlignLeft`): PyQt6
  only has scoped enums. The table of enums comes from the installed PyQt5 and PyQGIS (QGIS 3.22), where
  the scoped spelling works too, so code that passes runs on both;
- renamed enum members (`Qt.MidButton`, `Qt.TextColorRole`, `Qt.BackgroundColorRole`,
  `QPainter.HighQualityAntialiasing`), `exec_()`/`print_()`, `qApp`, a null `QVariant()`, the
  8-argument `QDateTime(...)` and `QDateTime(QDate(...))`;
- classes removed from Qt 6 (`QRegExp`, `QDesktopWidget`, `QGLWidget`, `QMatrix`, `QTextCodec`, ...) and
  classes that moved from QtWidgets to QtGui (`QAction`, `QShortcut`, ...) unless imported with a fallback;
- members Qt 6 removed that a Qt 6 enum table cannot list (`FollowRedirectsAttribute`, ...);
- the script's warnings: `resources_rc`, `addAction` with 4+ arguments, `desktop()`,
  `QFontMetrics.width()`, `activated[str]`.

    python scripts/check_qt6.py mtp_qgis      # exit 1 and the findings, or nothing and exit 0
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

RENAMED_ENUMS = {
    ("Qt", "MidButton"): "Qt.MouseButton.MiddleButton",
    ("Qt", "TextColorRole"): "Qt.ItemDataRole.ForegroundRole",
    ("Qt", "BackgroundColorRole"): "Qt.ItemDataRole.BackgroundRole",
    ("QPainter", "HighQualityAntialiasing"): "QPainter.RenderHint.Antialiasing",
}
REMOVED_CLASSES = {
    "QRegExp": "QRegularExpression", "QRegExpValidator": "QRegularExpressionValidator",
    "QDesktopWidget": "QScreen (QApplication.screens())", "QGLWidget": "QOpenGLWidget", "QGLFormat": "QSurfaceFormat",
    "QMatrix": "QTransform", "QTextCodec": "str.encode/decode", "QStringRef": "str", "QLinkedList": "list",
    "QSound": "QSoundEffect", "QWebView": "QWebEngineView", "QWebPage": "QWebEnginePage",
}
MOVED_TO_QTGUI = {"QAction", "QActionGroup", "QShortcut", "QUndoCommand", "QUndoStack", "QUndoGroup",
                  "QFileSystemModel"}
RENAMED_METHODS = {"exec_": "exec", "print_": "print"}
# Members gone from Qt 6 that the migration script's enum table cannot see (it is built from Qt 6).
REMOVED_MEMBERS = {
    "FollowRedirectsAttribute": "QNetworkRequest.Attribute.RedirectPolicyAttribute",
    "HighDpiPixmaps": "nothing (always on in Qt 6)", "AA_EnableHighDpiScaling": "nothing (always on in Qt 6)",
}
PYQT_PACKAGES = ("PyQt5", "PyQt6", "PyQt4")


def enum_table() -> dict[tuple[str, str], str]:
    """(class name, member) → enum name, for every unscoped enum member of PyQt5's and PyQGIS's classes."""
    import importlib

    table: dict[tuple[str, str], str] = {}
    modules = ["qgis.PyQt.QtCore", "qgis.PyQt.QtGui", "qgis.PyQt.QtWidgets", "qgis.PyQt.QtNetwork",
               "qgis.PyQt.QtXml", "qgis.core", "qgis.gui", "qgis.analysis"]
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for class_name, cls in vars(module).items():
            if not isinstance(cls, type):
                continue
            for attr in dir(cls):
                if attr.startswith("_"):
                    continue
                try:
                    value = getattr(cls, attr)
                except Exception:  # noqa: BLE001 (some sip descriptors raise on class access)
                    continue
                kind = type(value)
                # sip enums: the member's type is an enum type that the class (or a base) holds by name.
                if type(kind).__name__ == "enumtype" and not isinstance(value, type) and kind.__name__ != attr \
                        and getattr(cls, kind.__name__, None) is kind:
                    table[(class_name, attr)] = kind.__name__
    return table


def _imported_names(tree: ast.AST) -> dict[str, str]:
    """local name → module, for names imported from Qt or QGIS modules."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(("qgis", *PYQT_PACKAGES)):
            for alias in node.names:
                names[alias.asname or alias.name] = node.module
    return names


def _guarded(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside a try whose handler catches ImportError (a fallback import)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                h.type is None or "ImportError" in ast.unparse(h.type) for h in node.handlers):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom):
                    lines.add(inner.lineno)
    return lines


def check_source(source: str, filename: str, enums: dict[tuple[str, str], str]) -> list[str]:
    tree = ast.parse(source, filename=filename)
    imported = _imported_names(tree)
    guarded = _guarded(tree)
    found = []

    def report(node, text):
        found.append(f"{filename}:{node.lineno}: {text}")

    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                a.name.split(".")[-1] == "resources_rc" for a in node.names):
            report(node, "compiled resources are not supported in Qt 6: load icons by file path")
        if isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in PYQT_PACKAGES:
                report(node, f"import from qgis.PyQt{node.module[len(root):]}, not {node.module}")
            if node.module == "qgis.PyQt.Qt":
                report(node, "qgis.PyQt.Qt is gone in Qt 6: import Qt from qgis.PyQt.QtCore")
            for alias in node.names:
                if alias.name in REMOVED_CLASSES:
                    report(node, f"{alias.name} is removed in Qt 6: use {REMOVED_CLASSES[alias.name]}")
                if alias.name == "qApp":
                    report(node, "qApp is removed in Qt 6: use QApplication.instance()")
                if alias.name in MOVED_TO_QTGUI and node.module.endswith("QtWidgets") and node.lineno not in guarded:
                    report(node, f"{alias.name} lives in QtGui in Qt 6: import it from qgis.PyQt.QtGui, falling "
                                 "back to QtWidgets (try/except ImportError)")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PYQT_PACKAGES:
                    report(node, f"import qgis.PyQt modules, not {alias.name}")
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name):
                owner, member = node.value.id, node.attr
                if (owner, member) in RENAMED_ENUMS:
                    report(node, f"{owner}.{member} is gone in Qt 6: use {RENAMED_ENUMS[(owner, member)]}")
                elif owner in imported and (owner, member) in enums:
                    report(node, f"scoped enum needed in Qt 6: {owner}.{enums[(owner, member)]}.{member}")
                if owner == "qApp":
                    report(node, "qApp is removed in Qt 6: use QApplication.instance()")
                if owner == "QVariant" and member == "Type":
                    report(node, "QVariant.Type.X does not exist: use QMetaType.Type")
            if node.attr in REMOVED_MEMBERS:
                report(node, f"{node.attr} is removed in Qt 6: use {REMOVED_MEMBERS[node.attr]}")
            if node.attr in RENAMED_METHODS and isinstance(parents.get(node), ast.Call):
                report(node, f"{node.attr}() is gone in Qt 6: call {RENAMED_METHODS[node.attr]}()")
            if node.attr == "width" and isinstance(node.value, ast.Call) and ast.unparse(node.value.func).endswith(
                    ("fontMetrics", "QFontMetrics", "QFontMetricsF")):
                report(node, "QFontMetrics.width() is removed in Qt 6: use horizontalAdvance()")
        elif isinstance(node, ast.FunctionDef) and node.name in RENAMED_METHODS:
            report(node, f"define {RENAMED_METHODS[node.name]}(), not {node.name}() (Qt 6 names)")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "QVariant" and (
                    not node.args or (isinstance(node.args[0], ast.Attribute)
                                      and isinstance(node.args[0].value, ast.Name)
                                      and node.args[0].value.id == "QVariant")):
                report(node, "a null QVariant() is not NULL in Qt 6: use qgis.core.NULL")
            if isinstance(func, ast.Name) and func.id == "QDateTime" and (
                    len(node.args) == 8 or (len(node.args) == 1 and isinstance(node.args[0], ast.Call)
                                            and ast.unparse(node.args[0].func) == "QDate")):
                report(node, "this QDateTime constructor is gone in Qt 6: use QDateTime(QDate(...), QTime(...))")
            if isinstance(func, ast.Attribute) and func.attr == "addAction" and len(node.args) >= 4:
                report(node, "fragile addAction(...) call in Qt 6: make a QAction and add it")
            if isinstance(func, ast.Attribute) and func.attr == "desktop" and not node.args:
                report(node, "QApplication.desktop() is removed in Qt 6: use QScreen")
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "activated" and ast.unparse(node.slice) == "str":
            report(node, "activated[str] is removed in Qt 6: use activated or textActivated")
    return sorted(set(found), key=lambda f: (f.split(":")[0], int(f.split(":")[1])))


def check_paths(paths: list[Path]) -> list[str]:
    enums = enum_table()
    findings = []
    for root in paths:
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for path in files:
            findings += check_source(path.read_text(encoding="utf-8"), str(path), enums)
    return findings


if __name__ == "__main__":
    targets = [Path(p) for p in sys.argv[1:]] or [Path(__file__).resolve().parent.parent / "mtp_qgis"]
    listed = check_paths(targets)
    print("\n".join(listed))
    sys.exit(1 if listed else 0)
