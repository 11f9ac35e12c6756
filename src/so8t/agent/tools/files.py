"""`files.*`: list, read, write, move and delete files inside one folder, and nowhere else.

The model proposes paths; this module is what keeps them inside the configured root. Every
path is checked twice:

* when the call is validated (`Toolset.validate`, before the gate sees it): it must be a
  relative path of at most 4096 bytes, without NUL bytes and without any `..` component
  (`a/../b` is refused too: with symbolic links `a/..` need not be the root, and a model has
  no need for it);
* when it runs: the path is resolved (`Path.resolve()`, symbolic links followed) and must
  still lie inside the root, so a link anywhere in it that leads out is refused. The
  operation itself then walks from the root one folder at a time with `O_NOFOLLOW` and works
  relative to the last folder's descriptor (`dir_fd`), so a folder swapped for a link after
  the check makes the call fail instead of escaping (time-of-check / time-of-use). Platforms
  without `dir_fd` (Windows) fall back to the resolved paths.

Symbolic links that stay inside the root are fine: reads and writes follow them; move and
delete act on the link itself, like `mv` and `rm`. Listings show links as type "symlink" and
never descend into them.

Binary files: `files.read` returns text only, so a file with NUL bytes or that is not valid
UTF-8 is refused with a ToolError that says so (rather than returning mangled text).

Writes are atomic: the content goes to a temporary file in the same folder, is flushed to
disk, then `os.replace`d over the target, so a reader sees the old file or the new one, never
half of one; on any failure the temporary file is removed. Without `overwrite=true` an
existing file is refused (the check and the replace are a few system calls apart: a file
created in between by another process would be replaced).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from so8t.agent.tools.base import ToolAction, ToolError

MAX_PATH_BYTES = 4096

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# Descriptor-relative operations (openat, renameat, unlinkat...) are what make the walk safe
# against a folder being replaced by a link after the check; without them, use paths.
_USE_FDS = (
    bool(_NOFOLLOW)
    and bool(_DIRECTORY)
    and {os.open, os.stat, os.mkdir, os.rename, os.unlink, os.rmdir} <= os.supports_dir_fd
    and os.scandir in os.supports_fd
)


def _path_problem(path: str) -> str | None:
    """Why a path is refused before looking at the disk, or None. Shared by validation and run."""
    if "\x00" in path:
        return "contains a NUL byte"
    size = len(path.encode("utf-8", "surrogatepass"))
    if size > MAX_PATH_BYTES:
        return f"is {size} bytes long, over the limit of {MAX_PATH_BYTES}"
    if PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute() or PureWindowsPath(path).drive:
        return "is absolute; paths are relative to the files root"
    # Both separators, whatever the platform: '..\\x' is an escape on Windows.
    if ".." in path.replace("\\", "/").split("/"):
        return "contains '..'; paths are relative to the files root and may not climb out of it"
    return None


def _short(path: str) -> str:
    """The path as it appears in a message: quoted, and cut when absurdly long."""
    return repr(path if len(path) <= 200 else path[:200] + "...")


def _checked_path(value: str) -> str:
    problem = _path_problem(value)
    if problem:
        # A custom error keeps the message as written (no "Value error, " prefix).
        raise PydanticCustomError("unsafe_path", "{reason}", {"reason": f"path {_short(value)} {problem}"})
    return value


SafePath = Annotated[str, AfterValidator(_checked_path)]


def _desc(what: str) -> str:
    return (
        f"{what}, relative to the files root, with '/' between folders (e.g. 'notes/todo.md'); "
        "absolute paths and '..' are refused"
    )


class ListArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: SafePath = Field(default=".", description=_desc("Folder to list") + "; '.' is the root")
    recursive: bool = Field(default=False, description="Also list the contents of sub-folders (links are not followed)")


class ReadArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: SafePath = Field(description=_desc("File to read (UTF-8 text only)"))
    max_bytes: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Read at most this many bytes from the start (the tool's own limit applies when it is lower); "
            "the result says whether the text was cut"
        ),
    )


class WriteArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: SafePath = Field(description=_desc("File to write; missing folders are created"))
    content: str = Field(description="The whole new content of the file, written as UTF-8")
    overwrite: bool = Field(default=False, description="Replace the file if it already exists (refused otherwise)")


class MoveArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    src: SafePath = Field(description=_desc("File or folder to move or rename"))
    dst: SafePath = Field(description=_desc("Its new path; missing folders are created"))
    overwrite: bool = Field(default=False, description="Replace an existing file at dst (never a folder)")


class DeleteArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: SafePath = Field(description=_desc("File, link or empty folder to delete"))
    recursive: bool = Field(
        default=False,
        description=(
            "Also delete a folder that is not empty, with everything in it (links inside are removed, never followed)"
        ),
    )


@dataclass
class _Dir:
    """An open folder inside the root: a descriptor when the platform has them, else a path."""

    path: Path
    fd: int | None

    def arg(self, name: str) -> str:
        """What to pass to an os function together with `dir_fd=self.fd`."""
        return name if self.fd is not None else str(self.path / name)


def _kind(mode: int) -> str:
    return (
        "symlink" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"
    )


def _rmtree_fd(fd: int) -> int:
    """Delete everything in the open folder `fd` without following links; return the count.
    (Our own because `shutil.rmtree(dir_fd=)` needs Python 3.11 and the project allows 3.10.)"""
    count = 0
    with os.scandir(fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in entries:
        if is_dir:
            sub = os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
            try:
                count += _rmtree_fd(sub)
            finally:
                os.close(sub)
            os.rmdir(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)
        count += 1
    return count


class _Files:
    def __init__(self, root: str | Path, max_read_bytes: int, max_write_bytes: int, max_list: int):
        root_path = Path(root)
        if not root_path.is_dir():
            raise ValueError(f"files root {str(root)!r} does not exist or is not a folder")
        # Resolved once: a root given through a link is the folder the link points to now.
        self.root = root_path.resolve(strict=True)
        self.max_read_bytes = max_read_bytes
        self.max_write_bytes = max_write_bytes
        self.max_list = max_list

    # -- sandbox ------------------------------------------------------------------------------

    def _parts(self, action: str, path: str) -> tuple[str, ...]:
        """The components of a path, refusing what validation refuses (again: `run` can be
        reached without `Toolset.validate`)."""
        problem = _path_problem(path)
        if problem:
            raise ToolError(f"{action}: path {_short(path)} {problem}")
        return tuple(p for p in Path(path).parts if p != ".")

    def _inside(self, action: str, path: str, candidate: Path) -> tuple[str, ...]:
        """Resolve symbolic links and return the parts below the root; refuse anything outside."""
        try:
            resolved = candidate.resolve()
        except (OSError, RuntimeError) as exc:  # a link loop, a name too long...
            raise ToolError(f"{action}: path {_short(path)} cannot be resolved: {exc}") from None
        if not resolved.is_relative_to(self.root):
            raise ToolError(f"{action}: path {_short(path)} leads outside the files root through a symbolic link")
        return resolved.relative_to(self.root).parts

    def _locate(self, action: str, path: str, *, follow: bool) -> tuple[tuple[str, ...], str]:
        """(folder parts, final name) of a path that is not the root itself (see `_locate_any`)."""
        folder, name = self._locate_any(action, path, follow=follow)
        if name is None:
            raise ToolError(f"{action}: path {_short(path)} is the files root itself, which {action} does not accept")
        return folder, name

    def _locate_any(self, action: str, path: str, *, follow: bool) -> tuple[tuple[str, ...], str | None]:
        """(folder parts, final name) of a path, checked to stay inside the root.

        The whole path is resolved either way, so a link at any component that leads out is
        refused. With follow=True the target is the resolved path (read, write, list); with
        follow=False it is the final component itself inside its resolved folder (move and
        delete act on a link, not on what it points to). The name is None for the root.
        """
        parts = self._parts(action, path)
        full = self._inside(action, path, self.root.joinpath(*parts))
        if not parts or not full:
            return (), None
        if follow:
            return full[:-1], full[-1]
        return self._inside(action, path, self.root.joinpath(*parts[:-1])), parts[-1]

    @contextmanager
    def _open_dir(self, action: str, path: str, parts: tuple[str, ...], *, create: bool = False) -> Iterator[_Dir]:
        """Open the folder root/parts, one component at a time, never following a link."""
        target = self.root.joinpath(*parts)
        if not _USE_FDS:
            if create:
                target.mkdir(parents=True, exist_ok=True)
            if not target.is_dir():
                raise ToolError(f"{action}: folder {self._rel(parts)!r} of path {_short(path)} does not exist")
            yield _Dir(target, None)
            return
        fd = os.open(self.root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
        try:
            for i, part in enumerate(parts):
                flags = os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC
                where = self._rel(parts[: i + 1])
                try:
                    child = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise ToolError(f"{action}: folder {where!r} of path {_short(path)} does not exist") from None
                    try:
                        os.mkdir(part, 0o777, dir_fd=fd)
                    except FileExistsError:  # created meanwhile by someone else: fine
                        pass
                    child = os.open(part, flags, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    # Linux answers ENOTDIR for a link opened with O_DIRECTORY | O_NOFOLLOW: look.
                    st = self._lstat(_Dir(target, fd), part)
                    if st is not None and stat.S_ISLNK(st.st_mode):
                        raise ToolError(
                            f"{action}: {where!r} in path {_short(path)} is a symbolic link now (it "
                            f"was replaced after the check); refused"
                        ) from None
                    raise ToolError(f"{action}: {where!r} in path {_short(path)} is not a folder") from None
                os.close(fd)
                fd = child
            yield _Dir(target, fd)
        finally:
            os.close(fd)

    @contextmanager
    def _open_child(self, d: _Dir, name: str) -> Iterator[_Dir]:
        if d.fd is None:
            yield _Dir(d.path / name, None)
            return
        fd = os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=d.fd)
        try:
            yield _Dir(d.path / name, fd)
        finally:
            os.close(fd)

    @staticmethod
    def _lstat(d: _Dir, name: str) -> os.stat_result | None:
        try:
            return os.stat(d.arg(name), dir_fd=d.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    @staticmethod
    def _rel(parts: tuple[str, ...]) -> str:
        return "/".join(parts) or "."

    # -- actions ------------------------------------------------------------------------------

    def list(self, a: ListArgs) -> dict:
        folder, name = self._locate_any("files.list", a.path, follow=True)
        parts = folder + ((name,) if name else ())
        entries: list[dict] = []

        def walk(d: _Dir, rel: tuple[str, ...]) -> bool:
            """Append entries in sorted, depth-first order; False once the cap is reached."""
            with os.scandir(d.fd if d.fd is not None else d.path) as it:
                # stat inside the block: fd-based entries use the iterator's descriptor.
                items = sorted((e.name, e.stat(follow_symlinks=False)) for e in it)
            for entry_name, st in items:
                if len(entries) >= self.max_list:
                    return False
                kind = _kind(st.st_mode)
                entries.append(
                    {
                        "path": self._rel(rel + (entry_name,)),
                        "type": kind,
                        "size": st.st_size if kind == "file" else None,
                    }
                )
                if kind == "dir" and a.recursive:
                    try:
                        with self._open_child(d, entry_name) as sub:
                            if not walk(sub, rel + (entry_name,)):
                                return False
                    except OSError:  # vanished, replaced or unreadable: list the rest
                        continue
            return True

        with self._open_dir("files.list", a.path, parts) as d:
            truncated = not walk(d, parts)
        return {"path": self._rel(parts), "entries": entries, "truncated": truncated}

    def read(self, a: ReadArgs) -> dict:
        folder, name = self._locate("files.read", a.path, follow=True)
        limit = min(a.max_bytes or self.max_read_bytes, self.max_read_bytes)
        with self._open_dir("files.read", a.path, folder) as d:
            try:
                # O_NONBLOCK: opening a FIFO would otherwise wait for a writer.
                fd = os.open(
                    d.arg(name), os.O_RDONLY | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0), dir_fd=d.fd
                )
            except FileNotFoundError:
                raise ToolError(f"files.read: file {_short(a.path)} does not exist") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise ToolError(
                        f"files.read: path {_short(a.path)} was replaced by a link after the check"
                    ) from None
                if exc.errno == errno.EISDIR:
                    raise ToolError(f"files.read: path {_short(a.path)} is a folder; use files.list") from None
                raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device could block or never end
            os.close(fd)
            what = "is a folder; use files.list" if stat.S_ISDIR(st.st_mode) else "is not a regular file"
            raise ToolError(f"files.read: path {_short(a.path)} {what}")
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
        truncated = len(data) > limit
        data = data[:limit]
        if b"\x00" in data:
            raise ToolError(
                f"files.read: file {_short(a.path)} looks binary (it contains NUL bytes); "
                f"files.read returns UTF-8 text only"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            # The cut can split a multi-byte character: only an incomplete sequence at the very end.
            if truncated and exc.reason == "unexpected end of data" and exc.start >= len(data) - 3:
                text = data[: exc.start].decode("utf-8")
            else:
                raise ToolError(
                    f"files.read: file {_short(a.path)} is not UTF-8 text (invalid byte at offset "
                    f"{exc.start}); files.read returns UTF-8 text only"
                ) from None
        return {"path": self._rel(folder + (name,)), "text": text, "bytes": st.st_size, "truncated": truncated}

    def write(self, a: WriteArgs) -> dict:
        data = a.content.encode("utf-8")
        if len(data) > self.max_write_bytes:
            raise ToolError(
                f"files.write: content for {_short(a.path)} is {len(data)} bytes, over the limit of "
                f"{self.max_write_bytes}"
            )
        folder, name = self._locate("files.write", a.path, follow=True)
        with self._open_dir("files.write", a.path, folder, create=True) as d:
            old = self._lstat(d, name)
            if old is not None:
                if stat.S_ISDIR(old.st_mode):
                    raise ToolError(f"files.write: path {_short(a.path)} is a folder")
                if not stat.S_ISREG(old.st_mode):
                    raise ToolError(f"files.write: path {_short(a.path)} exists and is not a regular file")
                if not a.overwrite:
                    raise ToolError(
                        f"files.write: file {_short(a.path)} already exists; pass overwrite=true to replace it"
                    )
            tmp = f".so8t-{secrets.token_hex(6)}.tmp"
            fd = os.open(d.arg(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666, dir_fd=d.fd)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    if old is not None and hasattr(os, "fchmod"):  # keep the replaced file's permissions
                        os.fchmod(f.fileno(), stat.S_IMODE(old.st_mode))
                    os.fsync(f.fileno())
                # rename(2) replaces the name itself: a link put there meanwhile is replaced, not followed.
                os.replace(d.arg(tmp), d.arg(name), src_dir_fd=d.fd, dst_dir_fd=d.fd)
            except BaseException:
                try:
                    os.unlink(d.arg(tmp), dir_fd=d.fd)
                except OSError:
                    pass
                raise
        return {"path": self._rel(folder + (name,)), "bytes": len(data), "replaced": old is not None}

    def move(self, a: MoveArgs) -> dict:
        src_folder, src_name = self._locate("files.move", a.src, follow=False)
        dst_folder, dst_name = self._locate("files.move", a.dst, follow=False)
        src_parts, dst_parts = src_folder + (src_name,), dst_folder + (dst_name,)
        if dst_parts[: len(src_parts)] == src_parts:
            raise ToolError(f"files.move: cannot move {_short(a.src)} to {_short(a.dst)}, inside itself")
        with self._open_dir("files.move", a.src, src_folder) as s:
            st = self._lstat(s, src_name)
            if st is None:
                raise ToolError(f"files.move: {_short(a.src)} does not exist")
            with self._open_dir("files.move", a.dst, dst_folder, create=True) as d:
                old = self._lstat(d, dst_name)
                if old is not None:
                    if stat.S_ISDIR(old.st_mode):
                        raise ToolError(
                            f"files.move: destination {_short(a.dst)} is an existing folder; give the "
                            f"full new path instead"
                        )
                    if not a.overwrite:
                        raise ToolError(
                            f"files.move: destination {_short(a.dst)} already exists; pass overwrite=true to replace it"
                        )
                    if stat.S_ISDIR(st.st_mode):
                        raise ToolError(f"files.move: cannot replace the file {_short(a.dst)} with a folder")
                try:
                    os.replace(s.arg(src_name), d.arg(dst_name), src_dir_fd=s.fd, dst_dir_fd=d.fd)
                except OSError as exc:
                    why = "they are on different file systems" if exc.errno == errno.EXDEV else exc.strerror
                    raise ToolError(f"files.move: cannot move {_short(a.src)} to {_short(a.dst)}: {why}") from None
        return {"src": self._rel(src_parts), "dst": self._rel(dst_parts), "type": _kind(st.st_mode)}

    def delete(self, a: DeleteArgs) -> dict:
        folder, name = self._locate("files.delete", a.path, follow=False)
        rel = self._rel(folder + (name,))
        with self._open_dir("files.delete", a.path, folder) as d:
            st = self._lstat(d, name)
            if st is None:
                raise ToolError(f"files.delete: {_short(a.path)} does not exist")
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(d.arg(name), dir_fd=d.fd)
                return {"path": rel, "deleted": _kind(st.st_mode)}
            try:
                os.rmdir(d.arg(name), dir_fd=d.fd)
                return {"path": rel, "deleted": "dir", "entries": 0}
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            if not a.recursive:
                raise ToolError(
                    f"files.delete: folder {_short(a.path)} is not empty; pass recursive=true to "
                    f"delete it with everything in it"
                )
            if d.fd is None:
                count = sum(len(files) + len(dirs) for _, dirs, files in os.walk(d.path / name))
                shutil.rmtree(d.path / name)
            else:
                with self._open_child(d, name) as sub:
                    assert sub.fd is not None  # a child of a folder opened by descriptor is one too
                    count = _rmtree_fd(sub.fd)
                os.rmdir(name, dir_fd=d.fd)
            return {"path": rel, "deleted": "dir", "entries": count}


def _safely(action: str, fn: Callable[[Any], dict]) -> Callable[[Any], dict]:
    """Turn an OS error (permission denied, name too long, disk full...) into a ToolError that
    names the action and the path: a refusal the model can read, not a crash of the agent loop.
    The OS's own file name is left out: it may be a temporary name or the absolute root."""

    def run(args: Any) -> dict:
        try:
            return fn(args)
        except OSError as exc:
            paths = " -> ".join(_short(getattr(args, k)) for k in ("path", "src", "dst") if hasattr(args, k))
            raise ToolError(f"{action}: {paths}: {exc.strerror or exc}") from None

    return run


def files_tool(
    root: str | Path, *, max_read_bytes: int = 1_000_000, max_write_bytes: int = 1_000_000, max_list: int = 500
) -> list[ToolAction]:
    """The `files.*` actions, confined to `root` (which must exist; ValueError otherwise)."""
    f = _Files(root, max_read_bytes, max_write_bytes, max_list)
    return [
        ToolAction(
            "files.list",
            f"List a folder under the files root (at most {max_list} entries): path relative "
            "to the root, type (file, dir, symlink, other) and size in bytes of files.",
            ListArgs,
            "read",
            _safely("files.list", f.list),
        ),
        ToolAction(
            "files.read",
            f"Read a UTF-8 text file under the files root (at most {max_read_bytes} bytes; "
            "binary files are refused): its text, its full size in bytes and whether the text was cut.",
            ReadArgs,
            "read",
            _safely("files.read", f.read),
        ),
        ToolAction(
            "files.write",
            f"Write a UTF-8 text file under the files root (at most {max_write_bytes} bytes), "
            "atomically; an existing file is replaced only with overwrite=true.",
            WriteArgs,
            "write",
            _safely("files.write", f.write),
        ),
        ToolAction(
            "files.move",
            "Move or rename a file or folder under the files root; an existing destination "
            "file is replaced only with overwrite=true.",
            MoveArgs,
            "write",
            _safely("files.move", f.move),
        ),
        ToolAction(
            "files.delete",
            "Delete a file, a link or an empty folder under the files root; a folder with "
            "contents only with recursive=true.",
            DeleteArgs,
            "delete",
            _safely("files.delete", f.delete),
        ),
    ]
