"""The shape of the code: parts that do not import each other in circles, a short engine, one
client written once, imports without side effects, process settings applied on purpose.
See docs/architecture.md."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "audience.index": ROOT / "index" / "audience" / "index",
    "audience.server": ROOT / "server" / "audience" / "server",
    "audience.client": ROOT / "client" / "audience" / "client",
}


def _modules(package: str) -> dict[str, Path]:
    root = PACKAGES[package]
    out = {}
    for path in root.rglob("*.py"):
        if "_proto" in path.parts:
            continue
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([package, *parts])] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the project that `name` imports (anywhere in the file, lazily or not)."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - node.level + 1]
                target = ".".join(stem + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import _x` names a module
                if f"{target}.{alias.name}" in known:
                    found.add(f"{target}.{alias.name}")
            found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_modules_import_each_other(package: str) -> None:
    modules = _modules(package)
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        # `from . import _x` inside a package names the package too: not an edge of its own
        graph[name] = {m for m in _imports(name, path, known) if not name.startswith(m + ".")}
    assert sum(map(len, graph.values())) > len(graph) // 2  # the parser found the imports
    assert _cycles(graph) == []


def test_engine_is_a_short_facade_and_modules_stay_small() -> None:
    index = PACKAGES["audience.index"]
    assert len((index / "_engine.py").read_text().splitlines()) <= 350
    for package in PACKAGES:
        for name, path in _modules(package).items():
            lines = len(path.read_text().splitlines())
            assert lines <= 600, f"{name}: {lines} lines"


def test_no_dicts_or_tuples_returned_to_the_server() -> None:
    """Every public Engine method returns a typed result (or None / an iterator of them)."""
    import typing

    from audience.index import Engine

    for name, fn in inspect.getmembers(Engine, inspect.isfunction):
        if name.startswith("_"):
            continue
        hint = typing.get_type_hints(fn).get("return")
        origin = typing.get_origin(hint) or hint
        assert origin not in (dict, tuple), f"Engine.{name} returns {hint}"


@pytest.mark.parametrize("package", ["audience.index", "audience.server"])
def test_lazy_exports_match_their_type_checking_imports(package: str) -> None:
    """A lazy public face (PEP 562): the runtime table and the names type checkers see agree."""
    module = __import__(package, fromlist=["_EXPORTS"])
    tree = ast.parse((PACKAGES[package] / "__init__.py").read_text())
    seen = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom)
                for alias in imp.names:
                    seen[alias.name] = "." * imp.level + (imp.module or "")
    assert seen == module._EXPORTS
    for name in module.__all__:
        assert getattr(module, name) is not None


# ---------------------------------------------------------------- one client, written once


def test_sync_client_is_generated_from_the_async_one() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "unasync.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_sync_and_async_clients_have_the_same_methods_and_parameters() -> None:
    from audience.client import AsyncAudienceClient, AudienceClient

    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in inspect.getmembers(cls)
            if not name.startswith("_") and callable(member)
        }

    sync, asyn = public(AudienceClient), public(AsyncAudienceClient)
    assert sorted(sync) == sorted(asyn)
    for name, sig in sync.items():
        shape = [(p.name, p.kind, p.default) for p in sig.parameters.values()]
        other = [(p.name, p.kind, p.default) for p in asyn[name].parameters.values()]
        assert shape == other, name
        assert inspect.iscoroutinefunction(getattr(AsyncAudienceClient, name)) or name in (
            "stream_lookalikes",
            "stream_segment_members",
        ), name

    def init(cls: type) -> list[tuple[str, object]]:
        return [(p.name, p.default) for p in inspect.signature(cls.__init__).parameters.values()]

    assert init(AudienceClient) == init(AsyncAudienceClient)


# ---------------------------------------------------------------- no side effects on import

_IMPORT_PROBE = """
import json, logging, os, sys
before = (dict(os.environ), logging.getLogger().level, sys.getswitchinterval())
import audience.client, audience.index, audience.server
from audience.client import AudienceClient, AsyncAudienceClient
from audience.index import Engine, EngineConfig, make_embedder, SegmentBuilder
from audience.index._encode._onnx_export import export_onnx, quantize_int8
from audience.server import AudienceServer, load_config, serve
import audience.server._cli
after = (dict(os.environ), logging.getLogger().level, sys.getswitchinterval())
changed = sorted(k for k in {*before[0], *after[0]} if before[0].get(k) != after[0].get(k))
print(json.dumps({"env": changed, "same_logging": before[1] == after[1],
                  "same_switch": before[2] == after[2]}))
"""


def test_importing_changes_no_process_wide_state() -> None:
    environ = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE], env=environ, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == (
        '{"env": [], "same_logging": true, "same_switch": true}'
    )


# ---------------------------------------------------------------- `audience serve` settings

_SETTINGS_PROBE = """
import os, sys
if sys.argv[1] == "grpc-first":
    import grpc
from audience.server._process import ProcessSettings, apply
summary = apply(ProcessSettings(huge_pages=False, grpc_poll_io=True, switch_interval_s=0.001))
from concurrent import futures
import grpc
echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.E", {"Echo": echo}),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    assert channel.unary_unary("/t.E/Echo")(b"ping", timeout=10) == b"ping"
server.stop(None)
print(repr(os.environ.get("GRPC_EXPERIMENTS")), sys.getswitchinterval())
print(summary)
"""


def _probe(code: str, arg: str, environ: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a settings probe in a fresh interpreter; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-c", code, arg], env=environ, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.parametrize(
    ("env", "order", "expected"),
    [
        (None, "settings-first", "'-event_engine_client,-event_engine_listener'"),
        ("", "settings-first", "''"),  # the operator's choice, even empty, is kept
        ("-event_engine_client", "settings-first", "'-event_engine_client'"),
        (None, "grpc-first", "None"),  # too late to take effect: left unset, and said so
    ],
)
def test_serve_applies_process_settings_before_grpc_loads(
    env: str | None, order: str, expected: str
) -> None:
    environ = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    if env is not None:
        environ["GRPC_EXPERIMENTS"] = env
    done = _probe(_SETTINGS_PROBE, order, environ)
    lines = done.stdout.strip().splitlines()
    assert lines[0] == f"{expected} 0.001"
    assert "GIL switch interval 1 ms" in lines[1]
    # grpc names experiments it does not know on stderr; these must all be known to it
    assert "experiment" not in done.stderr.lower(), done.stderr


_SERVE_PATH_PROBE = """
import sys
from audience.server import _cli, _process

def apply(settings):
    print("grpc or faiss loaded before the settings:",
          "grpc" in sys.modules or "faiss" in sys.modules, settings)
    raise SystemExit(0)

_process.apply = apply
_cli.main(["serve", "--data-dir", sys.argv[1], "--port", "0", "--token", "admin:s3cret",
           "--no-huge-pages", "--attribute", "age:numeric:0:99"])
"""


def test_audience_serve_applies_its_settings_before_anything_loads_grpc(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SERVE_PATH_PROBE, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "grpc or faiss loaded before the settings: False "
        "ProcessSettings(huge_pages=False, grpc_poll_io=True, switch_interval_s=0.0005, "
        "quiet_threads=True)"
    )


_QUIET_PROBE = """
import os, sys
import numpy  # loaded before the settings, as `audience serve` has it
from audience.server._process import ProcessSettings, apply
summary = apply(ProcessSettings(huge_pages=False, quiet_threads=sys.argv[1] == "on"))
import faiss
from threadpoolctl import threadpool_info
# numpy's OpenBLAS (faiss carries an OpenMP build of its own, governed by OpenMP)
blas = [i["num_threads"] for i in threadpool_info() if "numpy" in i["filepath"]]
print(os.environ.get("OMP_WAIT_POLICY"), blas)
print(summary)
"""


@pytest.mark.parametrize(
    ("mode", "env", "expected"),
    [
        ("on", {}, "PASSIVE [1]"),
        ("on", {"OMP_WAIT_POLICY": "ACTIVE", "OPENBLAS_NUM_THREADS": "2"}, "ACTIVE [2]"),
        ("off", {}, "None [cores]"),
    ],
)
def test_serve_quiets_thread_pools_unless_told_otherwise(
    mode: str, env: dict[str, str], expected: str
) -> None:
    """Idle OpenMP threads sleep and BLAS runs in the calling thread (on 2 cores a numpy-heavy
    query otherwise ran against spinning workers); an operator's values are kept."""
    blas_env = ("OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
    environ = {k: v for k, v in os.environ.items() if k not in blas_env}
    environ.update(env)
    lines = _probe(_QUIET_PROBE, mode, environ).stdout.strip().splitlines()
    if mode == "off":  # left to OpenBLAS: one thread per core
        expected = f"None [{min(os.cpu_count() or 1, 64)}]"
    assert lines[0] == expected
    assert (f"OMP_WAIT_POLICY={expected.split()[0]}" in lines[1]) == (mode == "on"), lines[1]
