"""files.* on the real filesystem: every action, and every way out of the root we could think of."""

from __future__ import annotations

import os
import stat

import pytest

from so8t.agent.tools import ToolError, Toolset, files as files_mod
from so8t.agent.tools.files import DeleteArgs, ListArgs, MoveArgs, ReadArgs, WriteArgs, files_tool


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture
def outside(tmp_path):
    o = tmp_path / "outside"
    o.mkdir()
    (o / "secret.txt").write_text("top secret", encoding="utf-8")
    return o


def call(ts: Toolset, name: str, args: dict) -> dict:
    """What the agent does: validate completely, then execute."""
    return ts.execute(ts.validate(name, args))


def files_in(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# -- happy paths ------------------------------------------------------------------------------


def test_write_read_list_move_delete_with_japanese_names(root):
    ts = Toolset(files_tool(root))
    assert call(ts, "files.write", {"path": "議事録/2024年/会議.md", "content": "# 会議\n決定事項: なし\n"}) == {
        "path": "議事録/2024年/会議.md",
        "bytes": len("# 会議\n決定事項: なし\n".encode()),
        "replaced": False,
    }
    assert (root / "議事録" / "2024年" / "会議.md").read_text(encoding="utf-8") == "# 会議\n決定事項: なし\n"

    got = call(ts, "files.read", {"path": "議事録/2024年/会議.md"})
    assert got == {
        "path": "議事録/2024年/会議.md",
        "text": "# 会議\n決定事項: なし\n",
        "bytes": len("# 会議\n決定事項: なし\n".encode()),
        "truncated": False,
    }

    (root / "メモ.txt").write_text("やること", encoding="utf-8")
    assert call(ts, "files.list", {}) == {
        "path": ".",
        "truncated": False,
        "entries": [{"path": "メモ.txt", "type": "file", "size": 12}, {"path": "議事録", "type": "dir", "size": None}],
    }
    rec = call(ts, "files.list", {"path": "議事録", "recursive": True})
    assert [(e["path"], e["type"]) for e in rec["entries"]] == [
        ("議事録/2024年", "dir"),
        ("議事録/2024年/会議.md", "file"),
    ]

    assert call(ts, "files.move", {"src": "メモ.txt", "dst": "アーカイブ/古いメモ.txt"}) == {
        "src": "メモ.txt",
        "dst": "アーカイブ/古いメモ.txt",
        "type": "file",
    }
    assert (root / "アーカイブ" / "古いメモ.txt").read_text(encoding="utf-8") == "やること"
    assert not (root / "メモ.txt").exists()

    assert call(ts, "files.delete", {"path": "アーカイブ/古いメモ.txt"}) == {
        "path": "アーカイブ/古いメモ.txt",
        "deleted": "file",
    }
    assert call(ts, "files.delete", {"path": "アーカイブ"}) == {"path": "アーカイブ", "deleted": "dir", "entries": 0}
    assert files_in(root) == ["議事録", "議事録/2024年", "議事録/2024年/会議.md"]


def test_delete_refuses_a_folder_with_contents_unless_recursive(root):
    ts = Toolset(files_tool(root))
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "x.txt").write_text("x")
    (root / "a" / "y.txt").write_text("y")
    with pytest.raises(ToolError, match=r"files.delete: folder 'a' is not empty; pass recursive=true"):
        call(ts, "files.delete", {"path": "a"})
    assert (root / "a" / "b" / "x.txt").exists()
    assert call(ts, "files.delete", {"path": "a", "recursive": True}) == {"path": "a", "deleted": "dir", "entries": 3}
    assert files_in(root) == []


def test_recursive_delete_removes_links_without_following_them(root, outside):
    ts = Toolset(files_tool(root))
    (root / "a").mkdir()
    (root / "a" / "to_outside").symlink_to(outside, target_is_directory=True)
    (root / "a" / "secret_link").symlink_to(outside / "secret.txt")
    call(ts, "files.delete", {"path": "a", "recursive": True})
    assert not (root / "a").exists()
    assert (outside / "secret.txt").read_text() == "top secret"


def test_move_a_folder_and_rename_in_place(root):
    ts = Toolset(files_tool(root))
    (root / "下書き").mkdir()
    (root / "下書き" / "案.txt").write_text("案")
    assert call(ts, "files.move", {"src": "下書き", "dst": "完成"})["type"] == "dir"
    assert (root / "完成" / "案.txt").read_text() == "案"
    with pytest.raises(ToolError, match="inside itself"):
        call(ts, "files.move", {"src": "完成", "dst": "完成/中/完成"})


def test_list_is_capped_and_says_so(root):
    ts = Toolset(files_tool(root, max_list=3))
    for i in range(5):
        (root / f"f{i}.txt").write_text("x")
    got = call(ts, "files.list", {})
    assert [e["path"] for e in got["entries"]] == ["f0.txt", "f1.txt", "f2.txt"] and got["truncated"] is True
    (root / "d").mkdir()
    assert call(Toolset(files_tool(root, max_list=10)), "files.list", {"recursive": True})["truncated"] is False


def test_list_shows_links_without_descending_into_them(root, outside):
    ts = Toolset(files_tool(root))
    (root / "out").symlink_to(outside, target_is_directory=True)
    got = call(ts, "files.list", {"recursive": True})
    assert got["entries"] == [{"path": "out", "type": "symlink", "size": None}]
    (root / "f.txt").write_text("x")
    with pytest.raises(ToolError, match="files.list: 'f.txt' in path 'f.txt' is not a folder"):
        call(ts, "files.list", {"path": "f.txt"})


# -- read -------------------------------------------------------------------------------------


def test_read_is_cut_at_max_bytes_without_breaking_a_character(root):
    ts = Toolset(files_tool(root, max_read_bytes=10))
    (root / "長文.txt").write_text("あいうえおかきくけこ", encoding="utf-8")  # 30 bytes
    got = call(ts, "files.read", {"path": "長文.txt", "max_bytes": 7})  # 2 characters and 1 byte
    assert got == {"path": "長文.txt", "text": "あい", "bytes": 30, "truncated": True}
    # The tool's own limit wins over a larger max_bytes.
    assert call(ts, "files.read", {"path": "長文.txt", "max_bytes": 1000})["text"] == "あいう"


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"PK\x03\x04\x00\x00binary", "looks binary \\(it contains NUL bytes\\)"),
        (b"caf\xe9 latin-1", "is not UTF-8 text \\(invalid byte at offset 3\\)"),
    ],
)
def test_read_refuses_binary_files(root, data, reason):
    (root / "blob.bin").write_bytes(data)
    with pytest.raises(ToolError, match=f"files.read: file 'blob.bin' {reason}; files.read returns UTF-8 text only"):
        call(Toolset(files_tool(root)), "files.read", {"path": "blob.bin"})


def test_read_refuses_folders_missing_files_and_fifos(root):
    ts = Toolset(files_tool(root))
    (root / "d").mkdir()
    with pytest.raises(ToolError, match="'d' is a folder; use files.list"):
        call(ts, "files.read", {"path": "d"})
    with pytest.raises(ToolError, match="file 'nope.txt' does not exist"):
        call(ts, "files.read", {"path": "nope.txt"})
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "pipe")
        with pytest.raises(ToolError, match="'pipe' is not a regular file"):  # and it did not hang
            call(ts, "files.read", {"path": "pipe"})


# -- write ------------------------------------------------------------------------------------


def test_write_refuses_to_replace_unless_overwrite_and_keeps_permissions(root):
    ts = Toolset(files_tool(root))
    (root / "設定.toml").write_text("old", encoding="utf-8")
    os.chmod(root / "設定.toml", 0o600)
    with pytest.raises(ToolError, match=r"files.write: file '設定.toml' already exists; pass overwrite=true"):
        call(ts, "files.write", {"path": "設定.toml", "content": "new"})
    assert (root / "設定.toml").read_text(encoding="utf-8") == "old"
    assert call(ts, "files.write", {"path": "設定.toml", "content": "新しい", "overwrite": True})["replaced"] is True
    assert (root / "設定.toml").read_text(encoding="utf-8") == "新しい"
    assert stat.S_IMODE((root / "設定.toml").stat().st_mode) == 0o600
    (root / "d").mkdir()
    with pytest.raises(ToolError, match="'d' is a folder"):
        call(ts, "files.write", {"path": "d", "content": "x", "overwrite": True})


def test_write_size_limit(root):
    ts = Toolset(files_tool(root, max_write_bytes=10))
    call(ts, "files.write", {"path": "ok.txt", "content": "あいう"})  # 9 bytes
    with pytest.raises(ToolError, match="content for 'big.txt' is 12 bytes, over the limit of 10"):
        call(ts, "files.write", {"path": "big.txt", "content": "あいうえ"})
    assert files_in(root) == ["ok.txt"]


def test_write_is_atomic_and_leaves_no_temporary_files(root, monkeypatch):
    ts = Toolset(files_tool(root))
    call(ts, "files.write", {"path": "a/b.txt", "content": "one"})
    call(ts, "files.write", {"path": "a/b.txt", "content": "two", "overwrite": True})
    assert files_in(root) == ["a", "a/b.txt"]

    def broken_replace(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files_mod.os, "replace", broken_replace)
    with pytest.raises(ToolError, match="files.write: 'a/b.txt': No space left on device"):
        call(ts, "files.write", {"path": "a/b.txt", "content": "three", "overwrite": True})
    assert files_in(root) == ["a", "a/b.txt"] and (root / "a" / "b.txt").read_text() == "two"


def test_move_refuses_to_replace_unless_overwrite(root):
    ts = Toolset(files_tool(root))
    (root / "a.txt").write_text("a")
    (root / "b.txt").write_text("b")
    (root / "d").mkdir()
    with pytest.raises(ToolError, match="destination 'b.txt' already exists; pass overwrite=true"):
        call(ts, "files.move", {"src": "a.txt", "dst": "b.txt"})
    with pytest.raises(ToolError, match="destination 'd' is an existing folder"):
        call(ts, "files.move", {"src": "a.txt", "dst": "d", "overwrite": True})
    with pytest.raises(ToolError, match="'nope' does not exist"):
        call(ts, "files.move", {"src": "nope", "dst": "x"})
    call(ts, "files.move", {"src": "a.txt", "dst": "b.txt", "overwrite": True})
    assert (root / "b.txt").read_text() == "a" and not (root / "a.txt").exists()


# -- the sandbox ------------------------------------------------------------------------------

ESCAPES = [
    ("/etc/passwd", "is absolute"),
    ("../x", "contains '..'"),
    ("a/../../x", "contains '..'"),
    ("a/../b", "contains '..'"),  # even when it would stay inside: links make '..' unclear
    ("..", "contains '..'"),
    ("C:/Windows/win.ini", "is absolute"),
    ("x\x00y", "contains a NUL byte"),
    ("a/" * 2100 + "x", "is 4201 bytes long, over the limit of 4096"),
]

CALLS = [
    ("files.list", lambda p: {"path": p}),
    ("files.read", lambda p: {"path": p}),
    ("files.write", lambda p: {"path": p, "content": "pwned", "overwrite": True}),
    ("files.move", lambda p: {"src": "here.txt", "dst": p}),
    ("files.move", lambda p: {"src": p, "dst": "here2.txt"}),
    ("files.delete", lambda p: {"path": p, "recursive": True}),
]


@pytest.mark.parametrize("path, reason", ESCAPES)
@pytest.mark.parametrize("name, make", CALLS)
def test_unsafe_paths_are_refused_at_validation_with_the_path_and_the_reason(root, path, reason, name, make):
    ts = Toolset(files_tool(root), max_args_bytes=100_000)
    (root / "here.txt").write_text("x")
    with pytest.raises(ToolError) as e:
        ts.validate(name, make(path))
    message = str(e.value)
    assert message.startswith(f"{name}: invalid arguments: ")
    assert f"path {files_mod._short(path)} {reason}" in message
    assert files_in(root) == ["here.txt"]


ARGS = {
    "files.list": ListArgs,
    "files.read": ReadArgs,
    "files.write": WriteArgs,
    "files.move": MoveArgs,
    "files.delete": DeleteArgs,
}


@pytest.mark.parametrize("path, reason", ESCAPES)
@pytest.mark.parametrize("name, make", CALLS)
def test_unsafe_paths_are_refused_at_run_too(root, path, reason, name, make):
    """A caller that skips Toolset.validate (model_construct) still cannot get out."""
    ts = Toolset(files_tool(root))
    (root / "here.txt").write_text("x")
    args = {"recursive": False, "max_bytes": None, "overwrite": True, "content": "pwned"} | make(path)
    fields = ARGS[name].model_fields
    with pytest.raises(ToolError) as e:
        ts.actions[name].run(ARGS[name].model_construct(**{k: v for k, v in args.items() if k in fields}))
    assert str(e.value).startswith(f"{name}: path {files_mod._short(path)} {reason}")
    assert files_in(root) == ["here.txt"]


@pytest.fixture
def links(root, outside):
    """root/out -> outside (a folder), root/secret.txt -> outside/secret.txt, root/in/deep -> outside."""
    (root / "out").symlink_to(outside, target_is_directory=True)
    (root / "secret.txt").symlink_to(outside / "secret.txt")
    (root / "in").mkdir()
    (root / "in" / "deep").symlink_to(outside, target_is_directory=True)
    return root


@pytest.mark.parametrize(
    "name, args",
    [
        ("files.read", {"path": "secret.txt"}),
        ("files.write", {"path": "secret.txt", "content": "pwned", "overwrite": True}),
        ("files.delete", {"path": "secret.txt"}),
        ("files.move", {"src": "secret.txt", "dst": "mine.txt"}),
        ("files.list", {"path": "out"}),
        ("files.read", {"path": "out/secret.txt"}),
        ("files.write", {"path": "out/new.txt", "content": "pwned"}),
        ("files.write", {"path": "out/secret.txt", "content": "pwned", "overwrite": True}),
        ("files.delete", {"path": "out/secret.txt"}),
        ("files.delete", {"path": "out", "recursive": True}),
        ("files.move", {"src": "out/secret.txt", "dst": "mine.txt"}),
        ("files.move", {"src": "in", "dst": "out/in"}),
        ("files.read", {"path": "in/deep/secret.txt"}),
        ("files.write", {"path": "in/deep/sub/new.txt", "content": "pwned"}),
        ("files.list", {"path": "in/deep"}),
    ],
)
def test_symlinks_leading_outside_are_refused(links, outside, name, args):
    ts = Toolset(files_tool(links))
    with pytest.raises(ToolError, match=f"{name}: path '[^']+' leads outside the files root through a symbolic link"):
        call(ts, name, args)
    assert files_in(outside) == ["secret.txt"] and (outside / "secret.txt").read_text() == "top secret"


def test_symlinks_inside_the_root_work_and_delete_removes_only_the_link(root):
    ts = Toolset(files_tool(root))
    (root / "real").mkdir()
    (root / "real" / "a.txt").write_text("本物", encoding="utf-8")
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    (root / "a_link.txt").symlink_to(root / "real" / "a.txt")
    assert call(ts, "files.read", {"path": "alias/a.txt"})["text"] == "本物"
    assert call(ts, "files.read", {"path": "a_link.txt"}) == {
        "path": "real/a.txt",
        "text": "本物",
        "bytes": 6,
        "truncated": False,
    }
    call(ts, "files.write", {"path": "a_link.txt", "content": "更新", "overwrite": True})  # writes the target
    assert (root / "a_link.txt").is_symlink() and (root / "real" / "a.txt").read_text(encoding="utf-8") == "更新"
    assert call(ts, "files.delete", {"path": "a_link.txt"}) == {"path": "a_link.txt", "deleted": "symlink"}
    assert (root / "real" / "a.txt").exists()


def test_a_root_given_through_a_link_is_used_and_links_back_out_are_refused(tmp_path, outside):
    real = tmp_path / "real_root"
    real.mkdir()
    (tmp_path / "root_link").symlink_to(real, target_is_directory=True)
    ts = Toolset(files_tool(tmp_path / "root_link"))
    call(ts, "files.write", {"path": "a.txt", "content": "ok"})
    assert (real / "a.txt").read_text() == "ok"
    (real / "up").symlink_to(tmp_path, target_is_directory=True)  # a link to the root's parent
    with pytest.raises(ToolError, match="leads outside the files root"):
        call(ts, "files.read", {"path": "up/outside/secret.txt"})


def test_the_root_itself_cannot_be_deleted_moved_or_written(root):
    ts = Toolset(files_tool(root))
    (root / "self").symlink_to(root, target_is_directory=True)
    for name, args in [
        ("files.delete", {"path": ".", "recursive": True}),
        ("files.delete", {"path": ""}),
        ("files.move", {"src": ".", "dst": "x"}),
        ("files.move", {"src": "self/", "dst": "x"}),
        ("files.write", {"path": ".", "content": "x", "overwrite": True}),
        ("files.read", {"path": "."}),
    ]:
        with pytest.raises(ToolError, match=f"{name}: path '[^']*' is the files root itself"):
            call(ts, name, args)
    assert root.is_dir()


def test_a_folder_swapped_for_a_link_after_the_check_is_not_followed(root, outside, monkeypatch):
    """Time of check / time of use: pretend the resolve check ran before `out` became a link;
    the descriptor walk (O_NOFOLLOW at every component) still refuses to go through it."""
    if not files_mod._USE_FDS:
        pytest.skip("no dir_fd support on this platform")
    ts = Toolset(files_tool(root))
    (root / "out").symlink_to(outside, target_is_directory=True)
    (root / "link.txt").symlink_to(outside / "secret.txt")
    monkeypatch.setattr(
        files_mod._Files, "_inside", lambda self, action, path, candidate: candidate.relative_to(self.root).parts
    )
    with pytest.raises(ToolError, match="'out' in path 'out/x.txt' is a symbolic link now"):
        call(ts, "files.write", {"path": "out/x.txt", "content": "pwned"})
    with pytest.raises(ToolError, match="'link.txt' was replaced by a link after the check"):
        call(ts, "files.read", {"path": "link.txt"})
    assert files_in(outside) == ["secret.txt"]


def test_the_root_must_exist(tmp_path):
    with pytest.raises(ValueError, match="does not exist or is not a folder"):
        files_tool(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="does not exist or is not a folder"):
        files_tool(tmp_path / "file")


# -- schema -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("files.read", {}, "path: Field required"),
        ("files.read", {"path": "a.txt", "encoding": "latin-1"}, "encoding: Extra inputs are not permitted"),
        ("files.write", {"path": "a.txt"}, "content: Field required"),
        ("files.read", {"path": "a.txt", "max_bytes": 0}, "max_bytes: Input should be greater than or equal to 1"),
        ("files.delete", {"path": "a.txt", "recursive": "yes please"}, "recursive: Input should be a valid boolean"),
    ],
)
def test_arguments_are_validated_against_the_schema(root, name, args, message):
    with pytest.raises(ToolError, match=message):
        Toolset(files_tool(root)).validate(name, args)


def test_schemas_and_risk_tiers(root):
    ts = Toolset(files_tool(root))
    assert {n: a.risk for n, a in ts.actions.items()} == {
        "files.list": "read",
        "files.read": "read",
        "files.write": "write",
        "files.move": "write",
        "files.delete": "delete",
    }
    for schema in ts.schemas():
        params = schema["function"]["parameters"]
        assert params["additionalProperties"] is False and schema["function"]["description"]
        assert all(p.get("description") for p in params["properties"].values()), schema["function"]["name"]
    call_ = ts.validate("files.write", {"content": "x", "path": "a.txt"})
    assert call_.canonical == '{"arguments":{"content":"x","path":"a.txt"},"name":"files.write"}'
