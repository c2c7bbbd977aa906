"""The import graph of `evo_merge`: no circle, and no import climbing the floors
weights, tasks < merge, zoo < mass, align < irt < search < report < cli, the demo zoos imported by
the CLI alone (imports inside functions count too, and so does a module named in full by a string,
"evo_merge.search.mass_kind:MASS_KIND", which `importlib` loads)."""

import ast
import re
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).parents[1] / "evo_merge"
FLOORS = {"weights": 0, "tasks": 0, "merge": 1, "zoo": 1, "mass": 2, "align": 2, "irt": 3, "search": 4, "report": 5,
          "cli": 6}
NAMED_MODULE = re.compile(r"(evo_merge(?:\.\w+)+)(?::\w+)?")  # a string importlib is given: "package.module:attr"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> nx.DiGraph:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        [*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])]
                    )
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and NAMED_MODULE.fullmatch(node.value):
                targets = [NAMED_MODULE.fullmatch(node.value).group(1)]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not target.startswith(name + "."):  # a package's own modules
                    graph.add_edge(name, target)
    return graph


def floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOORS.get(parts[1]) if len(parts) > 1 else None


def test_no_import_circle():
    circles = [sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert circles == []


def test_no_import_climbs_a_floor():
    climbs = [
        (a, b) for a, b in import_graph().edges if floor(a) is not None and floor(b) is not None and floor(b) > floor(a)
    ]
    assert climbs == []


def test_packages_on_one_floor_import_nothing_of_each_other():
    """weights and tasks, merge and zoo, mass and align each stand beside the other: an import
    between them would be a floor nobody drew (the climb test above cannot see it)."""
    beside = [(a, b) for a, b in import_graph().edges
              if floor(a) is not None and floor(a) == floor(b) and a.split(".")[1] != b.split(".")[1]]
    assert beside == []


def test_only_the_cli_imports_the_demo_zoos():
    zoo = "evo_merge.zoo"
    importers = {a for a, b in import_graph().edges if b.startswith(zoo) and not a.startswith(zoo)}
    assert importers and all(a.startswith("evo_merge.cli") for a in importers), importers


def test_the_config_schema_reads_only_tables_and_the_method_registry_from_higher_floors():
    """config.py is the lowest floor. It reads the allowed-value tables higher packages define (one
    table each for the schema, the CLI and the library), which import nothing of evo_merge, so the
    schema loads no model code; and, inside its validator, the merge methods' declared
    hyperparameters (plugins register methods at run time, so no table can hold them). Of the small
    top-level modules it reads `errors`, `schema` and `markup` (the characters a campaign's text may
    not hold are defined beside those shown as text), and `shipped`, where the shipped benchmarks
    lie (`arith` and `evo_arith` are one task), and `user_paths` (`~` in its paths), which import
    nothing of evo_merge."""
    graph = import_graph()
    tables = {"evo_merge.align.methods", "evo_merge.irt.kinds", "evo_merge.dtype_names", "evo_merge.shipped",
              "evo_merge.user_paths"}
    assert set(graph.successors("evo_merge.config")) == tables | {
        "evo_merge.errors", "evo_merge.schema", "evo_merge.markup", "evo_merge.merge.kinds",
        "evo_merge.merge.registry"}
    assert all(not list(graph.successors(m)) for m in tables)


def test_loading_the_schema_imports_no_model_code():
    """The graph above records `config -> irt.kinds`, not the package `__init__` modules such an
    import runs first: that the schema loads no torch rests on those staying lazy, checked here."""
    import subprocess
    import sys

    code = ("import sys, evo_merge.config\n"
            "print(sorted(m for m in ('torch', 'transformers', 'sklearn', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr[-2000:])


def test_the_small_top_level_modules_import_no_floor():
    """Any floor may use `errors`, `schema`, `console`, `markup`, ...: an import of a floor from one
    of them would let every floor climb through it unseen (config's tables are the one exception,
    held by the test above)."""
    graph = import_graph()
    top = [m for m in graph if floor(m) is None and m not in ("evo_merge", "evo_merge.config", "evo_merge.__main__")]
    assert "evo_merge.schema" in top and "evo_merge.errors" in top
    climbs = [(a, b) for a in top for b in graph.successors(a) if floor(b) is not None]
    assert climbs == []


def test_a_module_named_by_a_string_is_an_edge():
    """The search loads MASS's candidate kind by name: the guard sees that import as any other."""
    assert import_graph().has_edge("evo_merge.search.kinds", "evo_merge.search.mass_kind")
