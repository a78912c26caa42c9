"""The package's shape: its public API is a list, the library never imports the command-line
layer, and the imports inside ``nstyle/`` form a DAG."""

import ast
import subprocess
import sys
from pathlib import Path

import nstyle

PKG = Path(nstyle.__file__).resolve().parent

PUBLIC = [
    "color", "data", "distributed", "fastnet", "images", "losses", "lpips", "memory", "metrics", "optimize", "runinfo",
    "train", "transfer", "vgg", "weights",
    "FastNetConfig", "OptimConfig", "PerceptualLoss", "TrainConfig", "TransferSettings", "UserError", "features",
    "load_image", "load_model", "lpips_distance", "perceptual_loss", "save_image", "stylize", "stylize_batch",
    "__version__",
]  # fmt: skip


def test_public_api_is_exactly_the_list():
    assert nstyle.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(nstyle, name) is not None, name
    # the names the README documents
    assert nstyle.weights.load and nstyle.vgg.features and nstyle.optimize.stylize and nstyle.fastnet.load_model
    assert nstyle.stylize is nstyle.optimize.stylize and nstyle.features is nstyle.vgg.features


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: nstyle modules it imports}, at any depth of the file (lazy imports count too)."""
    files = {_module_name(f): f for f in PKG.rglob("*.py")}
    graph = {}
    for mod, f in files.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".")[: len(mod.split(".")) - node.level + (f.name == "__init__.py")]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                deps |= {t for t in [target] + [f"{target}.{a.name}" for a in node.names] if t in files}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in files}
        graph[mod] = {d for d in deps if d != mod and d != "nstyle" and not mod.startswith(d + ".")}
    return graph


def test_imports_inside_the_package_form_a_dag():
    graph = import_graph()
    state: dict[str, int] = {}

    def visit(u, path):
        state[u] = 1
        for v in sorted(graph[u]):
            assert state.get(v) != 1, "import cycle: " + " -> ".join(path[path.index(v) :] + [v])
            if v not in state:
                visit(v, path + [v])
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_library_imports_nothing_of_the_command_line_layer():
    graph = import_graph()
    library = [m for m in graph if not m.startswith("nstyle.cli")]
    assert "nstyle.optimize" in library and "nstyle.cli.stylize" in graph
    for m in library:
        assert not {d for d in graph[m] if d.startswith("nstyle.cli")}, m
    # and at run time: importing every library module loads no Hydra, OmegaConf or matplotlib
    code = (
        "import sys, nstyle, " + ", ".join(sorted(m for m in library if m != "nstyle")) + "\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf', 'matplotlib') "
        "or m.startswith('nstyle.cli'))\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]


def _renames(tree: ast.AST) -> list[int]:
    """Line numbers of ``os.replace``/``os.rename`` calls and of ``.rename`` on any object (a Path)."""
    return [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and (
            n.func.attr == "rename"
            or (n.func.attr == "replace" and isinstance(n.func.value, ast.Name) and n.func.value.id == "os")
        )
    ]


def test_one_atomic_writer_and_no_long_functions():
    """Renames that publish a file live only in ``_io``; no function of the package is over 80 lines."""
    for f in PKG.rglob("*.py"):
        tree = ast.parse(f.read_text())
        if f.name != "_io.py":
            assert not _renames(tree), f"{f.name}: a rename outside nstyle._io, line {_renames(tree)}"
        for n in ast.walk(tree):
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
                assert n.end_lineno - n.lineno + 1 <= 80, f"{f.name}:{n.name} is {n.end_lineno - n.lineno + 1} lines"
