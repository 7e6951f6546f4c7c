"""The import graph of rd/ points one way, as README.md's layout section says: the method core never imports the
UNet, the training loop, data, FID or the latent stack; helpers import nothing from rd (timing only rd.io); ops/
imports only itself (but for its benchmark command); the latent stack rd/sd builds on the core, the UNet, the
shared layers, data, FID and figures, and nothing else in rd imports it; nothing in the library imports a pipeline or a benchmark."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = {"schedules", "predictions", "solvers", "sampling", "rectify", "mixture", "orders", "metrics", "toy"}
LEAVES = {"io", "dist", "ema", "cli", "assignments", "layers"}        # import nothing from rd
HELPERS = LEAVES | {"timing"}                                         # timing keeps its laps with rd.io
TOPS = {"cifar", "bench", "evaluate"}                                 # pipelines and benchmarks: imported by no one ...
TOP_USERS = {("cifar", "evaluate"), ("ops.compare", "bench")}         # ... but these


def imports() -> dict[str, set[str]]:
    """{module: the rd modules it imports}, module names relative to rd ("ops.fused"); rd/__init__ is ""."""
    graph = {}
    for path in sorted((ROOT / "rd").rglob("*.py")):
        parts = path.relative_to(ROOT / "rd").with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = parts[:-1]                                          # the package a relative import starts from
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = list(package[:len(package) - node.level + 1])
                targets = [node.module] if node.module else [a.name for a in node.names]
                deps |= {".".join(base + t.split(".")) for t in targets}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "rd":
                rest = node.module.split(".")[1:]
                deps |= {".".join(rest)} if rest else {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("rd.")}
        graph[name] = {d for d in deps if d and d != name}
    return graph


def top(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_is_read_from_every_module():
    graph = imports()
    assert {"schedules", "cifar", "ops.fused", "ops.compare"} <= set(graph)
    assert {"schedules", "predictions", "solvers"} <= graph["sampling"] and graph["schedules"] == set()
    assert "ops.reference" in graph["ops.fused"], "relative imports inside rd.ops are resolved"
    assert graph["sd.autoencoder"] == {"layers"} and "rectify" in graph["sd.latent"], "and two levels up from rd.sd"


def test_imports_point_one_way():
    graph = imports()
    wrong = []
    for module, deps in graph.items():
        for dep in deps:
            t, d = top(module), top(dep)
            if t in CORE and d not in CORE | {"io", "dist", "ema", "timing"}:
                wrong.append(f"the method core's {module} imports {dep}")
            if t in LEAVES or (t == "timing" and d != "io"):
                wrong.append(f"the helper {module} imports {dep} (helpers import nothing from rd)")
            if t == "ops" and d != "ops" and (module, dep) not in TOP_USERS:
                wrong.append(f"{module} imports {dep} (rd.ops imports only itself)")
            if t == "sd" and d not in CORE | HELPERS | {"sd", "unet", "ops", "data", "fid", "figures"}:
                wrong.append(f"the latent stack's {module} imports {dep}")
            if d == "sd" and t != "sd":
                wrong.append(f"{module} imports the latent stack's {dep}")
            if d in TOPS and (module, dep) not in TOP_USERS:
                wrong.append(f"{module} imports the pipeline or benchmark {dep}")
    assert not wrong, "imports against the grain (README.md, Layout):\n" + "\n".join(sorted(wrong))
