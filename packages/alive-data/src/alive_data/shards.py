"""Reading and writing WebDataset tar shards: the I/O under the writer, the inspector and the pipeline.

URLs are whatever webdataset opens: local paths, ``pipe:`` commands, or ``scheme://`` URLs through
its ``gopen`` (http/s3/gs via their command-line clients). Keys must not contain dots (webdataset
splits the extension at the first one).
"""

from __future__ import annotations

import glob
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import webdataset as wds
from webdataset.tariterators import tarfile_samples

SHARD_PATTERN = "shard-{:06d}.tar"
_SHARD_RE = re.compile(r"shard-(\d{6})\.tar$")


def safe_key(name: str) -> str:
    """A WebDataset key from a file name or id: no dots or slashes."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def expand_urls(spec: str | list[str]) -> list[str]:
    """Shard URLs from a list, brace notation (``shard-{000000..000009}.tar``), a glob or a directory."""
    if isinstance(spec, list):
        return [u for s in spec for u in expand_urls(s)]
    if "://" in spec or spec.startswith("pipe:"):
        return list(wds.shardlists.expand_urls(spec))
    path = Path(spec)
    if path.is_dir():
        return sorted(str(p) for p in path.glob("*.tar"))
    if any(c in spec for c in "*?["):
        return sorted(glob.glob(spec))
    urls = list(wds.shardlists.expand_urls(spec))
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) not found, e.g. {missing[0]}")
    return urls


def iter_samples(urls: list[str], on_error: Callable[[str, Exception], None]) -> Iterator[dict]:
    """Raw samples ({"__key__", "__url__", ext: bytes}) of the shards in order.

    A corrupt or truncated shard reports through ``on_error(url, exception)`` and iteration moves
    on to the next shard; nothing raises.
    """
    for url in urls:

        def handler(exn: Exception, url: str = url) -> bool:
            on_error(url, exn)
            return False  # stop this shard: a tar stream cannot resync after a bad header

        yield from tarfile_samples([{"url": url}], handler=handler)


def shard_keys(path: Path) -> set[str]:
    """Keys in a complete local shard (reads headers only)."""
    keys = set()
    with tarfile.open(path) as tar:
        for name in tar.getnames():
            keys.add(name.split(".", 1)[0])
    return keys


class ShardSink:
    """Writes samples into numbered shards of about ``max_bytes`` each, atomically.

    Each shard is written as ``*.tar.tmp`` and renamed into place only when complete, so a reader
    or a resumed writer never sees half a shard.
    """

    def __init__(
        self, out_dir: Path, first_index: int, max_bytes: int, max_samples: int | None = None
    ) -> None:
        self.out_dir, self.index = out_dir, first_index
        self.max_bytes, self.max_samples = max_bytes, max_samples
        self._writer: wds.TarWriter | None = None
        self._tmp: Path | None = None
        self._bytes = self._samples = 0
        self.written: list[Path] = []

    def write(self, sample: dict) -> None:
        if self._writer is None:
            self._tmp = self.out_dir / (SHARD_PATTERN.format(self.index) + ".tmp")
            self._writer = wds.TarWriter(str(self._tmp))
            self._bytes = self._samples = 0
        self._writer.write(sample)
        self._bytes += sum(len(v) for k, v in sample.items() if not k.startswith("__"))
        self._samples += 1
        if self._bytes >= self.max_bytes or (self.max_samples and self._samples >= self.max_samples):
            self.finish()

    def finish(self) -> None:
        """Close and publish the shard being written, if any."""
        if self._writer is None:
            return
        self._writer.close()
        final = self.out_dir / SHARD_PATTERN.format(self.index)
        os.replace(self._tmp, final)
        self.written.append(final)
        self._writer, self.index = None, self.index + 1

    def abandon(self) -> None:
        """Drop the incomplete shard (after an error): its samples are redone by the next run."""
        if self._writer is not None:
            self._writer.close()
            self._tmp.unlink(missing_ok=True)
            self._writer = None


def existing_shards(out_dir: Path) -> tuple[set[str], int]:
    """(keys already written, next free shard index); removes leftovers of interrupted runs."""
    for stale in out_dir.glob("*.tar.tmp"):
        stale.unlink()
    keys: set[str] = set()
    last = -1
    for path in sorted(out_dir.glob("shard-*.tar")):
        match = _SHARD_RE.search(path.name)
        if match:
            keys |= shard_keys(path)
            last = max(last, int(match.group(1)))
    return keys, last + 1
