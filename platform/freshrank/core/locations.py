"""Where a store is: a local path or a URI (``file://``, ``s3://bucket/prefix``,
``gs://bucket/prefix``, anything ``pyarrow.fs.FileSystem.from_uri`` knows), the options a URI
cannot carry, and the pyarrow filesystem that reaches it. Nothing is contacted here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs


@dataclass(frozen=True)
class StorageOptions:
    """How to reach a store (only what a URI cannot say)."""

    s3_endpoint: str | None = None
    """S3-compatible endpoint, e.g. ``http://127.0.0.1:9000``; None: ``$AWS_ENDPOINT_URL_S3``,
    ``$AWS_ENDPOINT_URL``, else AWS itself."""
    s3_region: str | None = None
    """S3 region; None: the SDK's default (``$AWS_DEFAULT_REGION``...), or ``us-east-1`` with an
    endpoint override (S3-compatible stores ignore it)."""

    def __post_init__(self) -> None:
        if self.s3_endpoint is not None:
            parsed = urlparse(self.s3_endpoint)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ValueError(
                    f"s3_endpoint must look like http://host:port or https://host, got "
                    f"{self.s3_endpoint!r}"
                )


def is_uri(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is a URI (``s3://...``, ``file://...``) rather than a plain path.

    >>> is_uri("s3://bucket/x"), is_uri("/data/fr"), is_uri("rel/dir"), is_uri("file:///d")
    (True, False, False, True)
    """
    scheme = urlparse(os.fspath(location)).scheme
    return len(scheme) > 1  # a one-letter scheme is a Windows drive letter


def resolve(
    location: str | os.PathLike[str], options: StorageOptions | None = None
) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``location`` and the path inside it (no trailing slash).

    Nothing is contacted: S3 filesystems are built from the options and the environment, not by
    asking AWS for the bucket's region.

    >>> fs, path = resolve("file:///data/fr/landing")
    >>> fs.type_name, path
    ('local', '/data/fr/landing')
    >>> fs, path = resolve("s3://bucket/fr/", StorageOptions(s3_endpoint="http://127.0.0.1:9000"))
    >>> fs.type_name, path
    ('s3', 'bucket/fr')
    """
    options = options or StorageOptions()
    text = os.fspath(location)
    if not text:
        raise ValueError("storage location must be a non-empty path or URI")
    scheme = urlparse(text).scheme
    if not is_uri(text):  # a plain path (or a Windows drive letter)
        return pafs.LocalFileSystem(), os.path.abspath(text)
    if scheme == "s3" and "?" not in text:
        parsed = urlparse(text)
        if not parsed.netloc:
            raise ValueError(f"S3 URI needs a bucket: s3://bucket/prefix, got {text!r}")
        path = (parsed.netloc + parsed.path).rstrip("/")
        return _s3_filesystem(options), path
    fs, path = pafs.FileSystem.from_uri(text)
    return fs, path.rstrip("/") or path


def _s3_filesystem(options: StorageOptions) -> pafs.S3FileSystem:
    endpoint = (
        options.s3_endpoint
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    kwargs: dict[str, Any] = {}
    if options.s3_region:
        kwargs["region"] = options.s3_region
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
        kwargs.setdefault("region", "us-east-1")
    return pafs.S3FileSystem(**kwargs)


__all__ = ["StorageOptions", "is_uri", "resolve"]
