"""File-system access by URL (local paths, gs://, memory://, ...) through fsspec, for outputs and the cache."""

from __future__ import annotations

import os
import signal
import posixpath
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


def resolve(url: str | os.PathLike[str]) -> str:
    """A normalised URL: local paths become absolute; URLs with a scheme are kept as they are."""
    text = os.fspath(url)
    return text if "://" in text else os.path.abspath(text)


def join(base: str, *parts: str) -> str:
    """Join URL path segments with '/' (local paths too)."""
    return posixpath.join(base, *parts) if "://" in base else os.path.join(base, *parts)


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec file system holding ``url`` and the path within it."""
    fs, path = fsspec.core.url_to_fs(resolve(url))
    return fs, path


def is_local(url: str) -> bool:
    return isinstance(filesystem(url)[0], LocalFileSystem)


def exists(url: str) -> bool:
    if "://" not in url:
        return os.path.exists(url)
    fs, path = filesystem(url)
    return fs.exists(path)


def makedirs(url: str) -> None:
    if "://" not in url:
        os.makedirs(url, exist_ok=True)
        return
    fs, path = filesystem(url)
    fs.makedirs(path, exist_ok=True)


def remove_tree(url: str) -> None:
    """Delete a directory and everything in it (no error when it is absent)."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def remove(url: str) -> None:
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path)


def open_file(url: str, mode: str = "rb") -> IO[Any]:
    if "://" not in url:  # a local path: the built-in open, without fsspec's per-file overhead
        return open(url, mode)  # noqa: SIM115 - the caller closes it
    fs, path = filesystem(url)
    return fs.open(path, mode)


def read_bytes(url: str) -> bytes:
    with open_file(url, "rb") as f:
        return f.read()


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def list_files(url: str) -> list[str]:
    """Every file under ``url``, as paths relative to it with '/' separators, sorted."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        return []
    root = path.rstrip("/")
    return sorted(posixpath.relpath(p, root) if not isinstance(fs, LocalFileSystem) else os.path.relpath(p, root)
                  .replace(os.sep, "/") for p in fs.find(root))


def rename(src: str, dst: str) -> None:
    """Move ``src`` to ``dst``, replacing it; atomic on local disks (os.replace after fsync)."""
    if "://" not in src and "://" not in dst:
        fs, src_path, dst_path = None, src, dst
    else:
        fs, src_path = filesystem(src)
        _, dst_path = filesystem(dst)
    if fs is None or isinstance(fs, LocalFileSystem):
        fd = os.open(src_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(src_path, dst_path)
        dir_fd = os.open(os.path.dirname(dst_path), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    else:
        if fs.exists(dst_path):
            fs.rm(dst_path)
        fs.mv(src_path, dst_path)
    _kill_point(dst)


KILL_AFTER = "FLANPIPE_TEST_KILL_AFTER"


def _kill_point(committed: str) -> None:
    """Test hook: with FLANPIPE_TEST_KILL_AFTER=<text> set, the first commit of a file whose path contains <text>
    SIGKILLs the whole process group (the compile's driver and workers, when it runs in a session of its own)."""
    point = os.environ.get(KILL_AFTER)
    if point and point in committed:
        os.killpg(os.getpgrp(), signal.SIGKILL)


def upload(local_path: str, url: str) -> None:
    """Copy a local file to ``url`` (for writers that can only write local files, e.g. ArrayRecord)."""
    fs, path = filesystem(url)
    fs.put_file(local_path, path)
