"""The shape of the code, read from its text: function lengths, module sizes, and no cycles between files (Python
imports in experiment/; C includes and calls in images/). A function that grows past its limit, or an import or
call that closes a circle, fails here with its name, so that the harness keeps reading like images/ev/."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest
import tools

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = ROOT / "experiment"
IMAGES = ROOT / "images"

LONGEST_FUNCTION = 60  # lines, any function of experiment/
LONGEST_STEP_LIST = 40  # lines, the run's own loops: a short list of named steps
STEP_LISTS = {("run/reproduce.py", "_measure_all"), ("run/dead.py", "_run_levels")}
LARGEST_BENCH_MODULE = 300  # lines, each module of experiment/bench/
LONGEST_C_FUNCTION = 40  # lines, any function of images/


def python_functions(root: Path) -> list[tuple[str, str, int]]:
    """(file relative to root, function name, its lines) for every function and method under root."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((str(path.relative_to(root)), node.name, node.end_lineno - node.lineno + 1))
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def python_imports(path: Path) -> set[str]:
    """The experiment modules one file imports, at its top or inside a function, resolved to module names
    (`from . import x` is module x when x is one, else the package)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found |= {f"{base}.{a.name}" for a in node.names} | {base}
    return {name for name in found if name.startswith("experiment")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_function_of_the_harness_is_longer_than_its_limit():
    functions = python_functions(EXPERIMENT)
    assert len(functions) > 300, "the harness's functions were not found"
    too_long = [f"{file}:{name} {lines} lines" for file, name, lines in functions if lines > LONGEST_FUNCTION]
    assert not too_long, f"over {LONGEST_FUNCTION} lines: {too_long}"
    steps = {(file, name): lines for file, name, lines in functions if (file, name) in STEP_LISTS}
    assert set(steps) == STEP_LISTS, f"the run's step lists were renamed or moved: found {sorted(steps)}"
    assert all(lines < LONGEST_STEP_LIST for lines in steps.values()), steps


def test_each_bench_module_is_smaller_than_its_limit():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (EXPERIMENT / "bench").rglob("*.py")}
    assert not (EXPERIMENT / "bench" / "measure.py").exists()
    assert {k: v for k, v in sizes.items() if v > LARGEST_BENCH_MODULE} == {}


def test_the_harness_imports_no_module_that_imports_it_back():
    graph = {module_name(p): python_imports(p) for p in EXPERIMENT.rglob("*.py")}
    graph = {name: {m for m in imported if m in graph and m != name} for name, imported in graph.items()}
    assert len(graph) > 50
    # A package's __init__ importing its own modules is how a package is put together, not a cycle.
    graph = {name: {m for m in imported if not m.startswith(name + ".")} for name, imported in graph.items()}
    assert cycles(graph) == []


def test_cycles_are_found_where_there_are_some():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
COMMENTS_AND_STRINGS = re.compile(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', re.S)


def c_sources() -> list[Path]:
    return sorted(p for p in IMAGES.rglob("*") if p.suffix in (".c", ".h"))


def include_dirs() -> list[Path]:
    """The folders images/Makefile gives the compiler with -I, relative to images/."""
    return [IMAGES / d for d in re.findall(r"-I(\S+)", (IMAGES / "Makefile").read_text())]


def include_graph() -> dict[str, set[str]]:
    """File -> the files of ours it includes, found as the compiler finds them: beside it, then the -I folders."""
    graph = {}
    for path in c_sources():
        targets = set()
        for name in INCLUDE.findall(path.read_text()):
            found = [d / name for d in [path.parent, *include_dirs()] if (d / name).exists()]
            assert found, f"{path.relative_to(ROOT)} includes {name}, which is neither beside it nor in a -I folder"
            targets.add(str(found[0].resolve().relative_to(ROOT)))
        graph[str(path.relative_to(ROOT))] = targets
    return graph


# The folders a program's rule in images/Makefile may link besides its own, by the variable that names their files.
SHARED_SOURCES = {"EV_SRC": "ev", "COMMON_SRC": "common"}


def link_units() -> dict[str, list[Path]]:
    """Program -> the .c files images/Makefile links into it: its own folder, and images/ev and images/common
    where its rule links EV_SRC and COMMON_SRC."""
    rules = re.findall(r"^\$\(BUILD\)/(\w+):([^\n]*)", (IMAGES / "Makefile").read_text(), re.M)
    assert rules, "images/Makefile's program rules were not found"
    return {name: sorted([*(IMAGES / name).glob("*.c"),
                          *(path for variable, folder in SHARED_SOURCES.items() if variable in deps
                            for path in (IMAGES / folder).glob("*.c"))])
            for name, deps in rules}


def c_definitions(files: list[Path]) -> dict[str, Path]:
    """Name -> the file of these that defines it, for the functions and variables other files can reach (not
    static): a backend table that names another file's ops variable depends on that file as a call does."""
    command = [tools.require("ctags"), "-f", "-", "--languages=C", "--kinds-C=fv", "--fields=+S{file}",
               *map(str, files)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    defined = {}
    for row in out.splitlines():
        name, file, *fields = row.split("\t")
        if "file:" not in fields:
            defined[name] = Path(file)
    return defined


def call_graph(files: list[Path]) -> dict[str, set[str]]:
    """One program's .c file -> the others whose functions it calls or whose variables it names (a name used
    outside comments and strings)."""
    defined = c_definitions(files)
    graph = {}
    for path in files:
        words = set(re.findall(r"\b\w+\b", COMMENTS_AND_STRINGS.sub(" ", path.read_text())))
        graph[str(path.relative_to(IMAGES))] = {str(defined[w].relative_to(IMAGES)) for w in words
                                                 if w in defined and defined[w] != path}
    return graph


def test_no_c_file_includes_a_file_that_includes_it_back():
    graph = include_graph()
    assert any(graph.values())
    assert cycles(graph) == []


def test_no_c_function_is_longer_than_its_limit():
    command = [tools.require("ctags"), "-f", "-", "--languages=C", "--kinds-C=f", "--fields=+ne", "-R", str(IMAGES)]
    rows = [row.split("\t") for row in subprocess.run(command, capture_output=True, text=True,
                                                       check=True).stdout.splitlines()]
    spans = {f"{Path(file).relative_to(IMAGES)}:{name}": dict(f.split(":", 1) for f in fields if ":" in f)
             for name, file, *fields in rows}
    lengths = {k: int(f["end"]) - int(f["line"]) + 1 for k, f in spans.items() if "end" in f}
    assert len(lengths) > 200, "the C functions were not found"
    assert {k: v for k, v in lengths.items() if v > LONGEST_C_FUNCTION} == {}


@pytest.mark.parametrize("program", ["ephttpd", "pipetest", "openload"])
def test_no_two_c_files_of_a_program_call_each_other(program):
    graph = call_graph(link_units()[program])
    assert any(graph.values()), "no calls between files were found: the reading is broken"
    assert cycles(graph) == []
