"""The layout rules of src/finetune and tests/, read from the code's imports (AST); docs/architecture.md explains them.

1. Levels. Every file belongs to a level; a file imports only its own package or a strictly lower level:

       __main__ > cli                                      9, 8  the edge
       train, export, importers, report, serve, testing      7  commands (testing: fixtures, imported by nobody)
       infer, plan                                           6  shared layers that are also commands: report and
                                                                serve generate through infer; train prints the
                                                                memory plan that `finetune plan` prints
       runs                                                  5  every on-disk name of a run
       model                                                 4
       data                                                  3
       config                                                2
       log, requirements                                     1
       errors, finetune/__init__                             0

   So no command package imports another: what two of them share moves down a level. Type-only imports
   (`if TYPE_CHECKING:`) count too: a type from above is a dependency on above.
2. No import circle between files (type-only imports excluded: they never run).
3. No `_private` name imported from another file.
4. No loose module in src/finetune/ beyond __init__, __main__, cli, errors, log, requirements.
5. finetune's own modules are imported at module top, never inside a function (only heavy third-party modules
   are), except in LAZY_ALLOWED.
6. The `checkpoint-` spelling (the checkpoint directory name) lives in one source file.
7. tests/ mirrors src/finetune/: tests/<package>/test_<module>.py (tests/test_<module>.py for a top-level
   module); end-to-end command runs in tests/commands/, GPU tests in tests/gpu/, script tests in tests/scripts/;
   helpers conftest.py and launching.py at the top; one module's tests may split by aspect (tests/<package>/test_<module>_<aspect>.py).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "finetune"
TESTS = ROOT / "tests"

LEVELS = {
    "finetune": 0, "errors": 0, "log": 1, "requirements": 1,
    "config": 2, "data": 3, "model": 4, "runs": 5, "infer": 6, "plan": 6,
    "train": 7, "export": 7, "importers": 7, "report": 7, "serve": 7, "testing": 7,
    "cli": 8, "__main__": 9,
}
TOP_LEVEL = {"__init__", "__main__", "cli", "errors", "log", "requirements"}
# cli imports each command's entry when that command runs, so `finetune --help` stays fast and loads no torch
# (a command package pulls in numpy, pydantic models and datasets helpers: measured 1.3 s for infer.evaluate).
LAZY_ALLOWED = {"finetune.cli"}  # the edge: each command's entry is imported when that command runs
# (source, target) pairs with a measured reason: `finetune train`'s launcher starts torchrun and must not load
# torch and TRL itself (the worker does, in each process: ~5-20 s each on 2 cores).
# A worker (a process edge under torchrun) sets up the log channel before it imports the trainers, whose imports log.
LAZY_PAIRS = {("finetune.train.launch", "finetune.train.worker"), ("finetune.train.launch", "finetune.train.zero3"),
              ("finetune.train.worker", "finetune.train.run")}
TEST_HELPERS = {"conftest.py", "launching.py", "serving.py", "__init__.py"}
FREE_TEST_DIRS = {"commands", "gpu", "scripts"}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. finetune.data.build
    target: str  # the imported module (a file's module, or the package when the name is not a module)
    names: tuple[str, ...]  # the names taken `from` it
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`
    in_function: bool

    def where(self) -> str:
        return f"{module_file(self.source)}:{self.line}"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = modules()


def module_file(module: str) -> str:
    return MODULES[module].relative_to(ROOT).as_posix()


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if MODULES[module].name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports() -> list[Import]:
    found: list[Import] = []
    for module, path in MODULES.items():
        def visit(node: ast.AST, type_only: bool, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _is_type_checking(child):
                    for inner in child.body:
                        visit_one(inner, True, in_function)
                    for inner in child.orelse:
                        visit_one(inner, type_only, in_function)
                else:
                    visit_one(child, type_only, in_function)

        def visit_one(child: ast.AST, type_only: bool, in_function: bool) -> None:
            if isinstance(child, ast.ImportFrom):
                target = _absolute(module, child)
                if target.split(".")[0] == "finetune":
                    for alias in child.names:
                        sub = f"{target}.{alias.name}"
                        found.append(Import(module, sub if sub in MODULES else target, (alias.name,), child.lineno,
                                            type_only, in_function))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "finetune":
                        found.append(Import(module, alias.name, (), child.lineno, type_only, in_function))
            else:
                inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                visit(child, type_only, inside)

        visit(ast.parse(path.read_text(encoding="utf-8")), False, False)
    return found


IMPORTS = imports()


def _report(title: str, offenders: list[str]) -> str:
    return f"{title} ({len(offenders)}):\n  " + "\n  ".join(offenders)


def test_every_package_has_a_level() -> None:
    missing = sorted({package(m) for m in MODULES} - LEVELS.keys())
    assert not missing, _report("packages with no level in LEVELS (add them; see the module doc)", missing)


def test_imports_point_down() -> None:
    offenders = []
    for imp in IMPORTS:
        source, target = package(imp.source), package(imp.target)
        if source == target or target not in LEVELS or source not in LEVELS:
            continue
        if LEVELS[target] >= LEVELS[source] or target == "testing":
            offenders.append(f"{imp.where()}: {imp.source} (level {LEVELS[source]}) imports {imp.target} "
                             f"(level {LEVELS[target]})")
    assert not offenders, _report("imports that do not point down a level (move the shared code down)", offenders)


def test_no_import_circle_between_files() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        if not imp.type_only and imp.target in MODULES and imp.target != imp.source:
            graph[imp.source].add(imp.target)
    circles = _strongly_connected(graph)
    assert not circles, _report("import circles (files that import each other, directly or around a loop)",
                                [" <-> ".join(sorted(c)) for c in circles])


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one file (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(component)
    return out


def test_no_private_name_is_imported_from_another_file() -> None:
    offenders = [f"{imp.where()}: {name} from {imp.target}" for imp in IMPORTS for name in imp.names
                 if name.startswith("_") and not name.startswith("__") and imp.target != imp.source]
    assert not offenders, _report("private names imported from another file (make them public or move them)",
                                  offenders)


def test_no_loose_module_beside_the_packages() -> None:
    loose = sorted(p.name for p in SRC.glob("*.py") if p.stem not in TOP_LEVEL)
    assert not loose, _report(f"modules loose in src/finetune/ (only {sorted(TOP_LEVEL)} belong there)", loose)


def test_finetune_modules_are_imported_at_module_top() -> None:
    offenders = sorted({f"{imp.where()}: {imp.target}" for imp in IMPORTS
                        if imp.in_function and not imp.type_only and imp.source not in LAZY_ALLOWED
                        and (imp.source, imp.target) not in LAZY_PAIRS})
    assert not offenders, _report("finetune modules imported inside a function (import them at the top; only "
                                  "heavy third-party modules are imported lazily)", offenders)


def test_the_checkpoint_directory_name_is_spelled_in_one_file() -> None:
    files = sorted(path.relative_to(ROOT).as_posix() for path in SRC.rglob("*.py")
                   if "checkpoint-" in path.read_text(encoding="utf-8"))
    assert len(files) <= 1, _report("files spelling `checkpoint-` (one module owns the on-disk names)", files)


def test_tests_mirror_the_source_tree() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        rel = path.relative_to(TESTS)
        if "__pycache__" in rel.parts or path.name == "__init__.py":
            continue
        if len(rel.parts) == 1:
            ok = path.name in TEST_HELPERS or path.name == "test_layout.py" or (
                path.name.startswith("test_") and (SRC / path.name.removeprefix("test_")).is_file())
        elif rel.parts[0] in FREE_TEST_DIRS:
            ok = True
        else:
            source = SRC.joinpath(*rel.parts[:-1], path.name.removeprefix("test_"))
            ok = path.name.startswith("test_") and source.is_file()
            # test_<module>_<aspect>.py: one module's tests split by aspect (test_cache_sweep.py, test_whatsapp_rules.py)
            ok = ok or any(path.name.startswith(f"test_{module.stem}_") for module in source.parent.glob("*.py"))
            ok = ok or (len(rel.parts) > 1 and path.name == "conftest.py")
        if not ok:
            offenders.append(rel.as_posix())
    assert not offenders, _report("test files that mirror no source module (tests/<package>/test_<module>.py)",
                                  offenders)


# Rule 5 (leaf functions take values, not the whole Settings) as it stood when this test was written: functions
# that read at most two fields (besides `where`, which locates an error at the recipe line) and pass the object
# on to nothing. Stage methods and whole-recipe serializers are among them by design; the rest are debt to pay
# down, listed so that no new one is added. Remove a line when its function takes its values.
SETTINGS_LEAVES_ALLOWED = {
    "config/deepspeed.py:_supported",
    "config/describe.py:_wandb",
    "config/describe.py:_warmup",
    "config/describe.py:attention_plan",
    "config/describe.py:derived_values",
    "config/describe.py:resolved_yaml",
    "data/build.py:_filter",
    "data/build.py:_read_all",
    "data/build.py:_tokenize",
    "data/collate.py:make_collator",
    "data/holdout.py:held_out",
    "data/stream.py:eval_count",
    "export/command.py:_full_model_dir",
    "export/merge.py:_base_weight_files",
    "export/merge.py:_require_bitsandbytes",
    "infer/common.py:dataset_settings",
    "model/adapters.py:target_modules",
    "model/load.py:attention_backend",
    "plan/estimate.py:_trainable_items",
    "report/heldout.py:training_index",
    "report/models.py:select_targets",
    "runs/read.py:base_model_dir",
    "runs/read.py:resolve_adapter_dir",
    "serve/models.py:_served",
    "train/run.py:arguments",
    "train/run.py:datasets",
    "train/run.py:resolved_recipe_yaml",
    "train/run.py:trainer",
}


def _settings_leaves() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for param in node.args.args + node.args.kwonlyargs:
                if param.annotation is None or ast.unparse(param.annotation).strip("'\"") != "Settings":
                    continue
                fields, passed = set(), False
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == param.arg:
                        fields.add(sub.attr)
                    if isinstance(sub, ast.Call) and any(isinstance(a, ast.Name) and a.id == param.arg
                                                         for a in [*sub.args, *(k.value for k in sub.keywords)]):
                        passed = True
                if not passed and len(fields - {"where", "model_copy"}) <= 2:
                    found.append(f"{path.relative_to(SRC).as_posix()}:{node.name}")
    return found


def test_leaf_functions_take_values_not_the_whole_settings() -> None:
    offenders = sorted(set(_settings_leaves()) - SETTINGS_LEAVES_ALLOWED)
    assert not offenders, _report("functions that take the whole Settings to read one or two fields (take the values, "
                                  "or the recipe line `settings.where(...)` for errors)", offenders)
    stale = sorted(SETTINGS_LEAVES_ALLOWED - set(_settings_leaves()))
    assert not stale, _report("SETTINGS_LEAVES_ALLOWED names functions that no longer need it (remove them)", stale)


def test_the_rules_see_the_code() -> None:
    # A rule that reads nothing cannot fail: the scan must find the files and the imports it judges.
    assert {"finetune.cli", "finetune.config.settings", "finetune.data.build"} <= MODULES.keys()
    pairs = {(imp.source, imp.target) for imp in IMPORTS}
    assert ("finetune.data.build", "finetune.config.settings") in pairs
    assert any(imp.in_function and imp.source == "finetune.cli" for imp in IMPORTS)
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["c", "b", "a"]]
    assert "infer/common.py:dataset_settings" in _settings_leaves()
