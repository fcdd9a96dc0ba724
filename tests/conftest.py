"""Shared fixtures: a real gRPC server on a free local port, the real client, the real model,
real SQLite and FAISS files under tmp_path.

The model is loaded once per session and handed to each in-process server, so a test pays
for a server (milliseconds), not for a model load.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from audience.client import AudienceClient, Profile  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

ATTRIBUTES = ("age:numeric:10:90", "gender:categorical", "region:categorical")

# A small crafted population: three interests, each with distinct texts.
TOPICS = {
    "cook": [
        "Cooking at home: I bake sourdough bread every weekend",
        "Cooking recipe: slow-cooked beef stew with red wine and thyme",
        "Cooking tips: the best knives for chopping vegetables in the kitchen",
        "Baking recipe: my grandmother's apple pie with a buttery crust",
        "Cooking Italian food: making fresh pasta dough by hand",
        "Cooking dinner: roasting a whole chicken with lemon and garlic",
    ],
    "code": [
        "Programming in C++: debugging a segfault in my code",
        "Programming in Python: asyncio tasks and event loops",
        "Programming in Java: refactoring a large codebase with unit tests",
        "Programming in Go: writing a REST API with error handling",
        "Programming databases: why my SQL query needs an index",
        "Programming in Rust: borrow checker errors and lifetimes",
    ],
    "ball": [
        "Football match report: the striker scored a hat-trick in the derby",
        "Football tactics: the Champions League final and the midfield press",
        "Football drama: our goalkeeper saved a penalty in extra time",
        "Football news: transfer rumours for the new season",
        "Football coaching: training drills for youth soccer teams",
        "Football match: the referee's offside call ruined the game",
    ],
}


def crafted_profiles() -> list[Profile]:
    """18 users: cook-i, code-i, ball-i (i = 0..5), two texts each, with attributes."""
    profiles = []
    for topic, texts in TOPICS.items():
        for i, text in enumerate(texts):
            other = texts[(i + 1) % len(texts)]
            profiles.append(
                Profile(
                    f"{topic}-{i}",
                    texts=[text, other],
                    attributes={
                        "age": 20 + 10 * (i % 4),
                        "gender": "female" if i % 2 else "male",
                        "region": ["north", "south", "east"][i % 3],
                        "premium": i < 3,
                    },
                )
            )
    return profiles


@pytest.fixture(scope="session")
def embedder(tmp_path_factory: pytest.TempPathFactory):
    """The embedder the configured default backend gives (an ONNX one exports into a
    session temp dir once)."""
    from audience.index import EngineConfig, make_embedder

    return make_embedder(EngineConfig(data_dir=tmp_path_factory.mktemp("embedder-data")))


@pytest.fixture
def start_server(tmp_path: Path, embedder) -> Iterator[Callable[..., object]]:
    """start_server(**config) -> AudienceServer on 127.0.0.1:<free port>, stopped at teardown."""
    from audience.server import AudienceServer, load_config

    started = []

    def start(data_dir: Path | None = None, **overrides: object):
        overrides.setdefault("attributes", ATTRIBUTES)
        overrides.setdefault("host", "127.0.0.1")
        config = load_config(None, data_dir=data_dir or tmp_path / "data", port=0, **overrides)
        server = AudienceServer(config, embedder=embedder)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(grace=0)


@pytest.fixture
def server(start_server):
    return start_server()


@pytest.fixture
def client(server) -> Iterator[AudienceClient]:
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=30.0) as c:
        yield c


@pytest.fixture
def loaded(client) -> AudienceClient:
    """A client whose server holds the crafted population."""
    client.upsert_users(crafted_profiles(), batch_size=7)
    return client
