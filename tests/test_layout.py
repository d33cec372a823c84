"""common/ stays a set of small modules without import loops, and the scripts keep their shape."""

import ast
import glob
import os

import pytest

from tests.conftest import ROOT

SCRIPTS = ["sft_chat.py", "sft_completion.py", "dpo.py", "grpo.py", "synth_data.py"]


def imports_among_common() -> dict[str, set[str]]:
    graph = {}
    for path in glob.glob(os.path.join(ROOT, "common", "**", "*.py"), recursive=True):
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        graph[name] = {
            n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("common")
        }
    return graph  # fmt: skip


def test_common_has_no_import_loop():
    graph, done, stack = imports_among_common(), set(), []

    def visit(module):
        if module in stack:
            raise AssertionError(f"import loop: {' -> '.join([*stack[stack.index(module) :], module])}")
        if module in done:
            return
        stack.append(module)
        for target in graph.get(module, ()):
            visit(target)
        stack.pop()
        done.add(module)

    for module in graph:
        visit(module)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_script_reads_as_its_recipe(script):
    with open(os.path.join(ROOT, script), encoding="utf-8") as f:
        text = f.read()
    tree = ast.parse(text)
    doc = ast.get_docstring(tree) or ""
    assert "accelerate launch" in doc or "python " in doc  # the launch commands come first
    names = [n.targets[0].id for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)]
    assert "PARAMS" in names and "RULES" in names  # the schema and its own rules, side by side
    assert len(text.splitlines()) <= 300, f"{script} has grown past ~250 lines: move shared logic to common/"
    if script != "synth_data.py":
        main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
        assert "Trainer(" in ast.unparse(main)  # the trainer is built in plain sight
