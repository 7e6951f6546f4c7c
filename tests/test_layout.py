"""The import graph of rd/ points one way, as README.md's layout table says: each layer imports only the layers (or
modules) its row lists, so the method core never imports the UNet, the training loop, data, FID or the latent stack,
and no layer below imports the latent stack or the pipelines. The table is read from the README: the picture a
reader sees is the one checked."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def readme_layers() -> dict[str, tuple[list[str], set[str]]]:
    """{layer: (its modules, what it may import: layer names and module names)} from README.md's Layout table;
    a module written `ops/` stands for the package rd.ops and everything in it."""
    section = (ROOT / "README.md").read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for row in section.splitlines():
        if row.startswith("| **"):
            name, modules, allowed = (cell.strip() for cell in row.strip("|").split("|")[:3])
            layers[name.strip("*")] = (re.findall(r"`([\w/]+)`", modules),
                                       set(re.findall(r"`(\w+)`", allowed)) | set(re.findall(r"\b[a-z]+\b",
                                                                                     re.sub(r"`[^`]*`", "", allowed))))
    return layers


def layer_of(module: str, layers) -> list[str]:
    top = module.split(".")[0]
    return [name for name, (modules, _) in layers.items()
            if any(m == module or (m.endswith("/") and m[:-1] == top) for m in modules)]


def against_the_grain(graph: dict[str, set[str]], layers) -> list[str]:
    """Every import of `graph` that the importer's row of the table does not allow."""
    wrong = []
    for module, deps in graph.items():
        for dep in deps:
            (layer,), (dep_layer,) = layer_of(module, layers), layer_of(dep, layers)
            allowed = layers[layer][1]
            if dep_layer != layer and dep_layer not in allowed and dep not in allowed or (
                    dep_layer == layer and layer not in allowed and dep not in allowed):
                wrong.append(f"{module} ({layer}) imports {dep} ({dep_layer})")
    return sorted(wrong)


def test_the_graph_is_read_from_every_module():
    graph = imports()
    assert {"schedules", "cifar", "ops.fused", "ops.compare"} <= set(graph)
    assert {"schedules", "predictions", "solvers"} <= graph["sampling"] and graph["schedules"] == set()
    assert "ops.reference" in graph["ops.fused"], "relative imports inside rd.ops are resolved"
    assert graph["sd.autoencoder"] == {"layers"} and "rectify" in graph["sd.latent"], "and two levels up from rd.sd"


def test_the_readme_table_places_every_module_once():
    layers = readme_layers()
    assert set(layers) == {"core", "helpers", "kernel", "training", "latent", "pipelines"}, set(layers)
    assert all(allowed <= set(layers) | {"io"} for _, allowed in layers.values()), "a row allows an unknown layer"
    modules = [m for m in imports() if m]                         # rd/__init__ aside
    places = {m: layer_of(m, layers) for m in modules}
    assert all(len(p) == 1 for p in places.values()), {m: p for m, p in places.items() if len(p) != 1}
    listed = {m.rstrip("/") for ms, _ in layers.values() for m in ms}
    assert listed <= {m.split(".")[0] for m in modules}, "the table names a module that does not exist"


def test_the_readme_table_points_one_way():
    """The allowances themselves form no cycle (a layer may import itself), and no other layer may import the latent
    stack or the pipelines: what the README says of the table holds of the table."""
    layers = readme_layers()
    allows = {name: {a for a in allowed if a in layers} - {name} for name, (_, allowed) in layers.items()}
    left = dict(allows)
    while left:                                                   # peel off the layers that allow nothing left
        free = [name for name, deps in left.items() if not deps & set(left)]
        assert free, f"the table's allowances form a cycle among {sorted(left)}"
        left = {name: deps for name, deps in left.items() if name not in free}
    for top in ("latent", "pipelines"):
        assert not [name for name, deps in allows.items() if top in deps], f"a layer may import {top}"


def test_imports_point_one_way():
    wrong = against_the_grain(imports(), readme_layers())
    assert not wrong, "imports against README.md's layout table:\n" + "\n".join(wrong)


def test_an_import_against_the_grain_is_found():
    wrong = against_the_grain({"schedules": {"unet"}, "io": {"dist"}, "timing": {"io"}, "unet": {"sd.latent"},
                               "data": {"cifar"}, "ops.fused": {"ops.reference"}}, readme_layers())
    assert wrong == ["data (training) imports cifar (pipelines)", "io (helpers) imports dist (helpers)",
                     "schedules (core) imports unet (training)", "unet (training) imports sd.latent (latent)"]
