"""Fixtures shared by the data stage's tests."""

import pytest

from so8t.server.llm_server import serve_in_thread


@pytest.fixture
def serve_teacher():
    """Factory: serve a test teacher (an object with .app()) on a free port, as a real HTTP server;
    every one started is stopped at the end."""
    started = []

    def start(teacher):
        teacher.handle = serve_in_thread(teacher.app(), graceful_timeout_s=0.5)
        started.append(teacher)
        return teacher

    yield start
    for t in started:
        t.handle.stop()
