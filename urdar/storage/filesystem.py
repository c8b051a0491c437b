"""Filesystem bucket (-blocks-storage.backend=filesystem, the default): objects are files under a root.

Object "a/b/c" is the file <root>/a/b/c. Every file operation runs off the reactor thread: through
`offload.run(pool, ...)` when an Offload is given (urdar/net/offload.py; the pool must exist),
else in the reactor's thread pool, else inline (only for tests and tools with no reactor). Puts are
atomic: the data goes to a temporary file in <root>/.urdar-tmp/ (same filesystem), is fsynced, then
renamed into place, so a reader sees the old object or the whole new one. Directories are created on
put and empty ones removed on delete, and listing hides empty directories, so `list` answers as S3
would. A filesystem cannot hold both "a" and "a/b"; such a put fails with ObjectConflict."""
import errno
import os
import shutil
import tempfile

from urdar.storage.bucket import (
    Attributes, InvalidName, NotFound, ObjectConflict, check_range, list_names, put_data_kind,
    run_off_reactor, validate_name, validate_prefix)

STAGING_DIR = ".urdar-tmp"
_COPY_CHUNK = 1 << 20


class FilesystemBucket:
    """A Bucket over the directory `root` (created by the first put)."""

    def __init__(self, root, reactor=None, offload=None, pool="bucket"):
        self.root = os.path.abspath(os.fspath(root))
        self._reactor = reactor
        self._offload = offload
        self._pool = pool

    def __repr__(self):
        return "FilesystemBucket(%r)" % (self.root,)

    # -- running off the reactor -----------------------------------------------------------

    def _run(self, fn, *args):
        return run_off_reactor(self._offload, self._pool, self._reactor, fn, *args)

    def _path(self, name):
        validate_name(name)
        if name == STAGING_DIR or name.startswith(STAGING_DIR + "/"):
            raise InvalidName(name, "%r is reserved by the filesystem backend" % (STAGING_DIR,))
        return os.path.join(self.root, *name.split("/"))

    # -- Bucket ------------------------------------------------------------------------------

    def get(self, name):
        return self._run(self._get, name)

    def _get(self, name):
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(name) from None

    def get_range(self, name, offset, length):
        return self._run(self._get_range, name, offset, length)

    def _get_range(self, name, offset, length):
        check_range(offset, length)
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(length)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(name) from None

    def put(self, name, data):
        return self._run(self._put, name, data)

    def _put(self, name, data):
        path = self._path(name)
        kind = put_data_kind(data)
        staging = os.path.join(self.root, STAGING_DIR)
        os.makedirs(staging, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=staging, prefix="put-")
        try:
            with os.fdopen(fd, "wb") as f:
                if kind == "bytes":
                    f.write(data)
                elif kind == "path":
                    with open(data, "rb") as src:
                        shutil.copyfileobj(src, f, _COPY_CHUNK)
                else:
                    shutil.copyfileobj(data, f, _COPY_CHUNK)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            self._move_into_place(name, tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def _move_into_place(self, name, tmp, path):
        # A concurrent delete may remove the parent directory between makedirs and rename (it
        # prunes empty directories); try again a few times before giving up.
        for attempt in range(5):
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise ObjectConflict("cannot store %r: a parent of it is an object" % (name,),
                                     name) from None
            try:
                if os.path.isdir(path):
                    raise ObjectConflict("cannot store %r: objects exist below it" % (name,), name)
                os.replace(tmp, path)
                return
            except FileNotFoundError:
                if attempt == 4:
                    raise
            except NotADirectoryError:
                raise ObjectConflict("cannot store %r: a parent of it is an object" % (name,),
                                     name) from None
            except OSError as e:
                if e.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    raise ObjectConflict("cannot store %r: objects exist below it" % (name,),
                                         name) from None
                raise

    def delete(self, name):
        return self._run(self._delete, name)

    def _delete(self, name):
        path = self._path(name)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except PermissionError:
            # Linux reports EISDIR as EPERM for unlink(2) on a directory: not an object, nothing to do.
            if os.path.isdir(path):
                return
            raise
        # S3 has no directories: drop the ones this delete left empty, up to (not including) root.
        parent = os.path.dirname(path)
        while parent != self.root and parent.startswith(self.root + os.sep):
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)

    def exists(self, name):
        return self._run(lambda: os.path.isfile(self._path(name)))

    def attributes(self, name):
        return self._run(self._attributes, name)

    def _attributes(self, name):
        path = self._path(name)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(name) from None
        if not os.path.isfile(path):
            raise NotFound(name)
        return Attributes(st.st_size, st.st_mtime)

    def list(self, prefix="", delimiter="/"):
        return self._run(self._list, prefix, delimiter)

    def _list(self, prefix, delimiter):
        validate_prefix(prefix)
        if delimiter not in ("", "/"):
            raise ValueError("delimiter must be '/' or '' (recursive), not %r" % (delimiter,))
        # Everything up to the prefix's last '/' names a directory; the rest filters its entries.
        cut = prefix.rfind("/") + 1
        base, rest = prefix[:cut], prefix[cut:]
        top = os.path.join(self.root, *base.split("/")[:-1]) if base else self.root
        try:
            entries = list(os.scandir(top))
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = []
        for entry in entries:
            if not entry.name.startswith(rest) or not _utf8(entry.name):
                continue
            if not base and entry.name == STAGING_DIR:
                continue
            if entry.is_dir(follow_symlinks=False):
                if delimiter:
                    if _has_file(entry.path):
                        names.append(base + entry.name + "/")
                else:
                    names.extend(self._walk(entry.path, base + entry.name + "/"))
            elif entry.is_file():
                names.append(base + entry.name)
        return list_names(names, prefix, delimiter)

    def _walk(self, top, name_prefix):
        out = []
        for dirpath, dirnames, filenames in os.walk(top):
            rel = os.path.relpath(dirpath, top)
            here = name_prefix if rel == "." else name_prefix + rel.replace(os.sep, "/") + "/"
            if not _utf8(here):
                dirnames[:] = []
                continue
            out.extend(here + f for f in filenames if _utf8(f))
        return out


def _has_file(path):
    """Whether the directory tree at `path` holds at least one regular file."""
    for _dirpath, _dirnames, filenames in os.walk(path):
        if filenames:
            return True
    return False


def _utf8(s):
    # Files not written by us may have names that are not UTF-8 (surrogate-escaped by Python):
    # no object name can refer to them, so listings skip them.
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
