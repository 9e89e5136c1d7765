"""A Beam filesystem under the scheme `qdtest://` that behaves like an object store (gs://, s3://).

No bucket is reachable here. This one keeps its objects in a local folder but, like GCS, has no
folders (a path is an object name; listing is by prefix), no rename of a folder, and object
writes that replace an object whole. Importing this module registers it (Beam finds filesystems
among FileSystem's subclasses), in this process only: tests that use it run in-process.
"""
from __future__ import annotations

import os
import posixpath
import shutil

from apache_beam.io.filesystem import BeamIOError, FileMetadata
from apache_beam.io.localfilesystem import LocalFileSystem

PREFIX = "qdtest://"


def local_path(path: str) -> str:
    return path[len(PREFIX):] if path.startswith(PREFIX) else path


class ObjectStoreForTests(LocalFileSystem):
    @classmethod
    def scheme(cls):
        return "qdtest"

    def has_dirs(self):
        return False

    def join(self, basepath, *paths):
        return posixpath.join(basepath, *paths)

    def split(self, path):
        return posixpath.split(path)

    def _url_dirname(self, url_or_path):
        return posixpath.dirname(url_or_path)

    def mkdirs(self, path):
        pass  # an object store has no folders to make

    def _list(self, dir_or_prefix):
        prefix = local_path(dir_or_prefix)
        top = prefix if os.path.isdir(prefix) else os.path.dirname(prefix)
        for root, _, files in os.walk(top):
            for name in files:
                path = os.path.join(root, name)
                if path.startswith(prefix):
                    yield FileMetadata(PREFIX + path, os.path.getsize(path), os.path.getmtime(path))

    def create(self, path, *args, **kwargs):
        os.makedirs(os.path.dirname(local_path(path)), exist_ok=True)
        return super().create(local_path(path), *args, **kwargs)

    def open(self, path, *args, **kwargs):
        return super().open(local_path(path), *args, **kwargs)

    def exists(self, path):
        return os.path.isfile(local_path(path))

    def size(self, path):
        return super().size(local_path(path))

    def last_updated(self, path):
        return super().last_updated(local_path(path))

    def checksum(self, path):
        return super().checksum(local_path(path))

    def metadata(self, path):
        if not self.exists(path):
            raise BeamIOError(f"Path does not exist: {path}")
        local = local_path(path)
        return FileMetadata(path, os.path.getsize(local), os.path.getmtime(local))

    def rename(self, source_file_names, destination_file_names):
        for source, destination in zip(source_file_names, destination_file_names):
            os.makedirs(os.path.dirname(local_path(destination)), exist_ok=True)
            os.replace(local_path(source), local_path(destination))

    def copy(self, source_file_names, destination_file_names):
        for source, destination in zip(source_file_names, destination_file_names):
            os.makedirs(os.path.dirname(local_path(destination)), exist_ok=True)
            shutil.copyfile(local_path(source), local_path(destination))

    def delete(self, paths):
        for path in paths:
            local = local_path(path).rstrip("/")
            if os.path.isfile(local):
                os.remove(local)
            else:  # a prefix: every object under it (what Beam does to its temporary "folders")
                for metadata in list(self._list(local + "/")):
                    os.remove(local_path(metadata.path))
