"""img2dataset WebDataset shards read as WebDataset groups them: shard lists, member names, samples, and a tar
reader that refuses a shard cut short instead of silently reading fewer samples.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import tarfile
from typing import Iterator, List, Optional, Sequence, Tuple


def expand_shard_patterns(patterns: Sequence[str]) -> List[str]:
    """Existing files named by brace patterns ('coco/{00000..00295}.tar') and globs, sorted, without repeats."""
    import braceexpand  # a webdataset dependency

    found = set()
    for pattern in patterns:
        for expanded in braceexpand.braceexpand(pattern):
            if glob.has_magic(expanded):
                found.update(path for path in glob.glob(expanded) if os.path.isfile(path))
            elif os.path.isfile(expanded):
                found.add(expanded)
    return sorted(found)


def split_member_name(name: str) -> Tuple[str, str]:
    """WebDataset's (__key__, extension): the key runs to the first dot of the file name.

    Names WebDataset does not group into a sample (no extension, or nothing before the first dot, such as
    "._0001.jpg") get the key "".
    """
    directory, _, basename = name.rpartition("/")
    stem, dot, extension = basename.partition(".")
    if not stem or not dot or not extension:
        return "", extension
    return (f"{directory}/{stem}" if directory else stem), extension


@dataclasses.dataclass
class Sample:
    key: str
    members: List[Tuple[tarfile.TarInfo, Optional[bytes]]]

    def member(self, extension: str) -> Optional[bytes]:
        for info, data in self.members:
            if data is not None and split_member_name(info.name)[1] == extension:
                return data
        return None


class TruncatedArchiveError(tarfile.ReadError):
    """A tar that does not end with its end-of-archive marker: cut short, or a corrupt header mid-archive
    (``tarfile`` would silently stop reading there)."""


class _CheckedTarInfo(tarfile.TarInfo):
    """``tarfile`` takes a missing, short or corrupt header after the first member for the end of the archive;
    this raises TruncatedArchiveError instead. Only an all-zero block (the end-of-archive marker) ends it."""

    @classmethod
    def fromtarfile(cls, archive):
        try:
            return super().fromtarfile(archive)
        except tarfile.EOFHeaderError:
            raise
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError) as error:
            raise TruncatedArchiveError(f"the archive ends early, at byte {archive.offset} ({error})") from None
        except tarfile.InvalidHeaderError as error:
            raise TruncatedArchiveError(f"corrupt tar header at byte {archive.offset} ({error})") from None


def open_checked_stream(path: str) -> tarfile.TarFile:
    """The tar at ``path`` read as a stream (once, front to back; ``.tar.gz`` too) that raises
    TruncatedArchiveError when it does not end properly."""
    return tarfile.open(path, "r|*", tarinfo=_CheckedTarInfo)


def iter_samples(archive: tarfile.TarFile) -> Iterator[Sample]:
    """Consecutive members with the same key, as WebDataset groups them.

    Members that belong to no sample (directories, links, names without a key) come as samples of their own
    with the key "" (data None when they are not files): they are copied through, and get no annotation.
    """
    current: Optional[Sample] = None
    for info in archive:
        data = archive.extractfile(info).read() if info.isfile() else None
        key = split_member_name(info.name)[0] if info.isfile() else ""
        if current is not None and (current.key != key or not key):
            yield current
            current = None
        if not key:
            yield Sample(key="", members=[(info, data)])
            continue
        if current is None:
            current = Sample(key=key, members=[])
        current.members.append((info, data))
    if current is not None:
        yield current
