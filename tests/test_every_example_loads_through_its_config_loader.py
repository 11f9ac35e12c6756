"""Issue 17, item 12: the README points at files in examples/, and each must load as shipped
through the loader its command uses: server.yaml as `so8t serve --config` reads it (ServerConfig),
train.yaml as `so8t train --config` reads it (TrainConfig, and its --dry-run plan), tools.yaml
through so8t.agent.tools.config.load_tools, whose sandbox (examples/sandbox) is shipped with it,
policy-*.yaml as `so8t policy cases` reads it (so8t.data.policy.load_policy).
A new example file without a loader here fails the test, so none goes unchecked."""

from __future__ import annotations

from pathlib import Path

import pytest

from so8t.agent.tools.config import load_tools
from so8t.cli import main
from so8t.config import ServerConfig, TrainConfig, load_yaml, resolve
from so8t.data.policy import load_policy

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _server(path: Path) -> None:
    cfg = resolve(ServerConfig, (load_yaml(path), str(path)))
    assert cfg.run and cfg.admin_token_env == "SO8T_ADMIN_TOKEN"


def _train(path: Path) -> None:
    cfg = resolve(TrainConfig, (load_yaml(path), str(path)))
    cfg.validate()
    assert cfg.max_steps > 0 and cfg.data


def _tools(path: Path) -> None:
    toolset, _policy = load_tools(path)
    assert {"files.read", "sql.query", "browser.open", "mail.send", "calendar.create"} <= set(toolset.actions)
    # the shipped sandbox answers read-only calls, without writing anything next to it
    listed = toolset.execute(toolset.validate("files.list", {}))
    assert {e["path"] for e in listed["entries"]} >= {"meeting-notes.txt", "議事録.txt"}
    rows = toolset.execute(toolset.validate("sql.query", {"sql": "SELECT COUNT(*) FROM customers"}))["rows"]
    assert rows == [[3]]


def _policy(path: Path) -> None:
    policy = load_policy(path)
    assert len(policy.rules) >= 5 and {r.action.name for r in policy.rules} == {"ALLOW", "ESCALATE", "REFUSE"}


LOADERS = {
    "server.yaml": _server,
    "train.yaml": _train,
    "tools.yaml": _tools,
    "policy-en.yaml": _policy,
    "policy-ja.yaml": _policy,
}


def test_every_file_in_examples_has_a_loader_here():
    shipped = {p.name for p in EXAMPLES.iterdir() if p.is_file()}
    assert shipped == set(LOADERS), f"examples without a loader in this test: {sorted(shipped - set(LOADERS))}"


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_the_example_loads_through_its_commands_config_loader(name):
    LOADERS[name](EXAMPLES / name)


def test_the_sandbox_is_left_as_shipped_after_loading():
    def snapshot():
        return {
            str(p.relative_to(EXAMPLES)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in (EXAMPLES / "sandbox").rglob("*")
        }

    before = snapshot()
    _tools(EXAMPLES / "tools.yaml")
    assert snapshot() == before


def test_the_train_example_plans_on_a_cpu_without_training(capsys):
    assert main(["train", "--config", str(EXAMPLES / "train.yaml"), "--dry-run"]) == 0
    assert "total" in capsys.readouterr().out
