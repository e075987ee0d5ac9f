"""`wds:PATTERN` — WebDataset tar shards (`/data/shard-{000..009}.tar`), read by offset, never unpacked.

A WebDataset shard is a plain tar in which consecutive members sharing a key (the name up to the first dot of
its base name) form one sample: `000123.jpg`, `000123.cls`, `000123.txt`. We expand the pattern and group the
members exactly as the `webdataset` package does (`shardlists.expand_urls`, `tariterators.base_plus_ext`, its
meta-file rule), but instead of streaming the samples once we index them: one pass over the tar headers (the
data of image members is skipped by seeking; only the small label members are read) records, per sample, the
shard, the image member's byte offset and size, and its label. Item j is then one `seek` + `read` + decode.

So the dataset is an ordinary map-style `ImageDataset`: nothing is unpacked or held in memory but the index,
extraction's row-range shards split it across torchrun ranks and DataLoader workers without duplicates or gaps
(each rank reads only its rows' members), and few-shot subsets, `--on-error skip` and resume work unchanged.
The price is that shards must be local, uncompressed tar files (the WebDataset norm for JPEG/PNG/WebP images,
which do not compress further); `.tar.gz` shards and URLs are refused with a DatasetError saying so.

Row identity (`ds.paths[i]`) is `SHARD#KEY.EXT`; the feature cache's files digest stats (or hashes) each row's
shard, so rewriting a shard changes the cache key.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from clipadapt.data._extras import require
from clipadapt.data._folder import spec_classnames
from clipadapt.data._spec import Spec
from clipadapt.data.catalog import get_templates
from clipadapt.data.dataset import CaptionedImages, ImageDataset, decode_rgb
from clipadapt.errors import DatasetError

OPTIONS = ("image", "label", "classnames", "templates", "name")
CAPTION_OPTIONS = ("image", "caption", "name")
DEFAULT_IMAGE_KEYS = "jpg;jpeg;png;webp"
DEFAULT_LABEL_KEY = "cls"
DEFAULT_CAPTION_KEY = "txt"
SPLIT_PLACEHOLDER = "{split}"
_SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's tar_file_iterator skips these members
_INT = re.compile(r"^[+-]?\d+$")


class WdsLoader:
    """Item j: the image member at (shard_of[j], offsets[j], sizes[j]), read with one seek and decoded as RGB.
    A class holding plain lists (no open file handles), so datasets pickle for DataLoader workers."""

    def __init__(self, shards: Sequence[str], shard_of: Sequence[int], offsets: Sequence[int], sizes: Sequence[int],
                 names: Sequence[str]):
        self.shards, self.shard_of, self.offsets, self.sizes, self.names = (
            list(shards), list(shard_of), list(offsets), list(sizes), list(names))

    @property
    def files(self) -> list[str]:
        """The shard file of each item (the feature cache stats/hashes it: a rewritten shard changes the key)."""
        return [self.shards[s] for s in self.shard_of]

    def __call__(self, j: int) -> Image.Image:
        where = f"{self.shards[self.shard_of[j]]}#{self.names[j]}"
        try:
            with open(self.shards[self.shard_of[j]], "rb") as f:
                f.seek(self.offsets[j])
                data = f.read(self.sizes[j])
        except OSError as e:
            raise DatasetError(f"{where}: cannot read the shard ({type(e).__name__}: {e})") from e
        if len(data) != self.sizes[j]:
            raise DatasetError(f"{where}: the shard is shorter than when it was indexed ({len(data)} of "
                               f"{self.sizes[j]} bytes); was it rewritten? rebuild the dataset")
        return decode_rgb(data, where)


# ------------------------------------------------------------------------------------------------- pattern
def expand_pattern(spec: Spec, split: str) -> list[Path]:
    """The shard files of the pattern (`{split}` replaced by the split), in the order `webdataset` expands it."""
    wds = require("webdataset", f"dataset spec {spec.text!r}")
    pattern = spec.root.strip()
    if not pattern:
        raise DatasetError(f"dataset spec {spec.text!r}: expected wds:PATTERN, e.g. wds:/data/shard-{{000..009}}.tar")
    if re.match(r"^[a-z][a-z0-9+.-]*:", pattern, re.I) and not re.match(r"^[a-z]:[\\/]", pattern, re.I):
        raise DatasetError(
            f"dataset spec {spec.text!r}: {pattern.split(':', 1)[0]}: URLs are not supported; wds: reads local "
            "shard files only (download or mount them first)"
        )
    try:
        expanded = wds.shardlists.expand_urls(pattern.replace(SPLIT_PLACEHOLDER, split))
    except Exception as e:  # braceexpand's errors for unbalanced braces and the like
        raise DatasetError(
            f"dataset spec {spec.text!r}: bad shard pattern {pattern!r} ({type(e).__name__}: {e})") from e
    if any("{" in s or "}" in s for s in expanded):
        raise DatasetError(
            f"dataset spec {spec.text!r}: bad shard pattern {pattern!r}: braces left after expansion "
            f"({expanded[0]!r}); use {{000..009}} ranges or {{a,b}} lists (and {SPLIT_PLACEHOLDER} for the split)"
        )
    shards = [Path(s).expanduser().resolve() for s in expanded]
    shards = list(dict.fromkeys(shards))
    if not shards:
        raise DatasetError(f"dataset spec {spec.text!r}: the pattern {pattern!r} names no shard")
    missing = [s for s in shards if not s.is_file()]
    if missing:
        raise DatasetError(
            f"dataset spec {spec.text!r}: {len(missing)} of {len(shards)} shard file(s) not found, first: {missing[0]}"
        )
    return shards


# ------------------------------------------------------------------------------------------------- index
_BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")  # regular file, old-style regular file, contiguous file


def _octal(field: bytes, path: Path, at: int) -> int:
    """A tar numeric field: NUL/space-terminated octal, or GNU base-256 (high bit set)."""
    if field[:1] and field[0] & 0x80:
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise DatasetError(f"{path}: corrupt tar header at byte {at} (numeric field {field!r})") from None


def _pax_records(data: bytes, path: Path, at: int) -> dict[str, str]:
    """POSIX pax extended-header records `LEN key=value\n`."""
    out, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] not in (b"\0", b""):
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
            key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        except ValueError:
            raise DatasetError(f"{path}: corrupt pax header at byte {at}") from None
        if length <= 0:
            raise DatasetError(f"{path}: corrupt pax header at byte {at}")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def tar_members(f, path: Path):
    """(name, data offset, size) of each regular-file member of an uncompressed tar, reading only the headers
    (plus pax / GNU long-name records) and seeking over the data: what `tarfile` reports, ~20x faster (PAX
    archives, as `webdataset.TarWriter` writes them, cost `tarfile` two full header parses per member)."""
    offset, pax_global, pax, long_name = 0, {}, {}, None
    while True:
        f.seek(offset)
        header = f.read(_BLOCK)
        if not header or header == b"\0" * _BLOCK:
            return  # end of archive (a zero block), or a file that simply stops after its last member
        if len(header) < _BLOCK:
            raise DatasetError(f"{path}: truncated tar header at byte {offset}")
        stored = _octal(header[148:156], path, offset)
        unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
        if stored != unsigned and stored != sum(struct.unpack_from("148b8x356b", header)) + 8 * 32:
            raise DatasetError(f"{path}: not a tar file, or corrupt at byte {offset} (header checksum mismatch)")
        size = _octal(header[124:136], path, offset)
        kind = header[156:157]
        data = offset + _BLOCK
        if kind in (b"x", b"g", b"L"):
            f.seek(data)
            payload = f.read(size)
            if kind == b"L":
                long_name = payload.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            else:
                (pax_global if kind == b"g" else pax).update(_pax_records(payload, path, offset))
            offset = data + -(-size // _BLOCK) * _BLOCK
            continue
        fields = {**pax_global, **pax}
        if "size" in fields:
            size = int(fields["size"])
        name = long_name or fields.get("path")
        if name is None:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
            if prefix:
                name = prefix.decode("utf-8", "surrogateescape") + "/" + name
        pax, long_name = {}, None
        if kind in _REGULAR and not (kind == b"\0" and name.endswith("/")):  # old-style directories end in /
            yield name, data, size
        offset = data + -(-size // _BLOCK) * _BLOCK


def _scan_shard(path: Path, image_keys: list[str], wanted: dict[str, str],
                wds) -> list[tuple[str, str, int, int, dict[str, str]]]:
    """(sample key, image suffix, data offset, size, {role: text}) of every sample of one shard, in tar order;
    `wanted` maps a role ('label', 'caption') to the member extension read (UTF-8 text) for it. Members are
    grouped into samples as `webdataset` groups them (its `base_plus_ext` and meta-member rules)."""
    meta_prefix, meta_suffix = wds.tariterators.meta_prefix, wds.tariterators.meta_suffix
    samples, current = [], None
    with open(path, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            raise DatasetError(f"{path}: a gzip-compressed shard; wds: needs uncompressed .tar shards to read images "
                               "by offset (gunzip it: image members do not compress anyway)")

        def flush(sample: dict | None) -> None:
            if not sample:
                return
            key = sample.pop("__key__")
            image = next((k for k in image_keys if k in sample), None)
            if image is None:
                raise DatasetError(f"{path}: sample {key!r} has no image key (one of {';'.join(image_keys)}); it has "
                                   f"{sorted(sample)} (choose the member with ?image=EXT[;EXT...] in the spec)")
            texts = {}
            for role, ext in wanted.items():
                if ext not in sample:
                    raise DatasetError(f"{path}: sample {key!r} has no {role} key {ext!r}; it has {sorted(sample)} "
                                       f"(choose the member with ?{role}=EXT in the spec)")
                offset, size = sample[ext]
                f.seek(offset)
                try:
                    texts[role] = f.read(size).decode("utf-8").strip()
                except UnicodeDecodeError as e:
                    raise DatasetError(f"{path}: {key}.{ext}: the {role} member is not UTF-8 text ({e})") from e
            samples.append((key, image, *sample[image], texts))

        for name, offset, size in tar_members(f, path):
            if ("/" not in name and name.startswith(meta_prefix) and name.endswith(meta_suffix)) \
                    or _SKIP_META.match(name):
                continue
            prefix, suffix = wds.tariterators.base_plus_ext(name)
            if prefix is None:
                continue
            suffix = suffix.lower()
            if current is None or prefix != current["__key__"]:
                flush(current)
                current = {"__key__": prefix}
            if suffix in current:
                raise DatasetError(f"{path}: duplicate member {name!r} in sample {prefix!r}")
            current[suffix] = (offset, size)
        flush(current)
    return samples


def _labels(spec: Spec, shards: list[Path], raw: list[str], where: list[str]) -> tuple[list[int], list[str]]:
    """Integer labels and class names: integer label members index the class-name file; name members are mapped
    through it, or (no file, no `{split}` in the pattern) through their sorted set. The class-name file is
    `?classnames=FILE` (relative: to the first shard's folder), else classnames.txt/.json beside the shards or one
    folder up (CLIP_benchmark's `wds_<name>/{train,test}/*.tar` + `wds_<name>/classnames.txt`)."""
    folder = shards[0].parent
    sidecar = spec_classnames(spec, folder, (folder, folder.parent))
    numeric = [bool(_INT.match(v)) for v in raw]
    if all(numeric):
        labels = [int(v) for v in raw]
        if sidecar is None:
            raise DatasetError(
                f"dataset spec {spec.text!r}: integer labels need class names: put classnames.txt (one per line) "
                f"beside the shards ({shards[0].parent}) or one folder up, or pass ?classnames=FILE"
            )
        source, names = sidecar
        for label, item in zip(labels, where):
            if not 0 <= label < len(names):
                raise DatasetError(f"{item}: label {label} out of range: {source} lists {len(names)} classes")
        return labels, names
    if any(numeric):
        first = numeric.index(True)
        raise DatasetError(f"{where[first]}: label {raw[first]!r} is an integer but other samples name their class "
                           f"(e.g. {raw[numeric.index(False)]!r}); use one kind of label")
    if sidecar is not None:
        source, names = sidecar
        index = {n: i for i, n in enumerate(names)}
        for value, item in zip(raw, where):
            if value not in index:
                raise DatasetError(f"{item}: class {value!r} is not listed in {source}")
        return [index[v] for v in raw], names
    if SPLIT_PLACEHOLDER in spec.root:
        raise DatasetError(
            f"dataset spec {spec.text!r}: labels are class names and the pattern has {SPLIT_PLACEHOLDER}: give "
            "?classnames=FILE (or a classnames.txt beside the shards) so that every split has the same label order"
        )
    names = sorted(set(raw))
    index = {n: i for i, n in enumerate(names)}
    return [index[v] for v in raw], names


def _default_name(pattern: str) -> str:
    """The folder the pattern starts in: `/data/cars/{split}/{0..3}.tar` and `/data/cars/shard-{0..9}.tar` -> cars."""
    fixed = pattern.split("{", 1)[0]
    folder = fixed if fixed.endswith(("/", os.sep)) else os.path.dirname(fixed)
    return Path(folder).expanduser().resolve().name or "wds"


def _index(spec: Spec, split: str, roles: dict[str, str]) -> tuple[list[Path], WdsLoader, list[str],
                                                                  list[dict[str, str]]]:
    """(shards, loader, row paths `SHARD#KEY.EXT`, per-row texts of `roles`) of the split's shards."""
    wds = require("webdataset", f"dataset spec {spec.text!r}")
    shards = expand_pattern(spec, split)
    image_keys = [k.strip().lower() for k in spec.options.get("image", DEFAULT_IMAGE_KEYS).split(";") if k.strip()]
    wanted = {role: spec.options.get(role, default).strip().lower() for role, default in roles.items()}
    if not image_keys or not all(wanted.values()):
        raise DatasetError(f"dataset spec {spec.text!r}: ?image= and ?{'= ?'.join(roles)}= must name tar member "
                           "extensions")
    samples = [(s, offset, size, f"{key}.{ext}", text) for s, shard in enumerate(shards)
               for key, ext, offset, size, text in _scan_shard(shard, image_keys, wanted, wds)]
    if not samples:
        raise DatasetError(f"dataset spec {spec.text!r}: the {len(shards)} shard(s) of split {split!r} hold no "
                           f"samples (first shard: {shards[0]})")
    shard_of, offsets, sizes, names, texts = (list(column) for column in zip(*samples))
    paths = [f"{shards[s]}#{n}" for s, n in zip(shard_of, names)]
    return shards, WdsLoader([str(s) for s in shards], shard_of, offsets, sizes, names), paths, texts


def build_wds(spec: Spec, split: str) -> ImageDataset:
    spec.check_options(OPTIONS)
    shards, loader, paths, texts = _index(spec, split, {"label": DEFAULT_LABEL_KEY})
    labels, classnames = _labels(spec, shards, [t["label"] for t in texts], paths)
    return ImageDataset(
        kind="wds",
        name=spec.options.get("name", _default_name(spec.root)),
        split=split,
        classnames=classnames,
        templates=get_templates(spec.options.get("templates")),
        paths=paths,
        labels=labels,
        loader=loader,
    )


def build_wds_captions(spec: Spec, split: str) -> CaptionedImages:
    """Images and captions: `?caption=txt` (default) names the caption member; its lines are the image's captions
    (CLIP_benchmark's retrieval shards keep several captions as lines of one `txt`); a `.json` member may hold a
    string or a list of strings."""
    spec.check_options(CAPTION_OPTIONS)
    _, loader, paths, texts = _index(spec, split, {"caption": DEFAULT_CAPTION_KEY})
    captions = []
    for path, text in zip(paths, texts):
        value = text["caption"]
        if spec.options.get("caption", DEFAULT_CAPTION_KEY).endswith("json"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}: the caption member is not JSON ({e})") from e
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list):
                raise DatasetError(f"{path}: a JSON caption member must hold a string or a list of strings")
            captions.append(value)
        else:
            captions.append([line.strip() for line in value.splitlines() if line.strip()])
    return CaptionedImages(kind="wds", name=spec.options.get("name", _default_name(spec.root)), split=split,
                           paths=paths, captions=captions, loader=loader)
