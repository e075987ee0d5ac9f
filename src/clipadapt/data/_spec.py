"""Parsing dataset spec strings: `KIND:...[?key=value&key=value]` (docs/datasets.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clipadapt.errors import DatasetError

KINDS = ("coop", "imagefolder", "csv", "torchvision", "wds", "hf")
_NAMED_KINDS = ("coop", "torchvision")  # KIND:NAME:ROOT; the others are KIND:ROOT


@dataclass(frozen=True)
class Spec:
    """A parsed spec: `kind`, registry `name` (coop/torchvision), `root` path text, `options` from `?k=v&...`."""

    text: str
    kind: str
    name: str
    root: str
    options: dict[str, str] = field(default_factory=dict)

    def root_path(self) -> Path:
        return Path(self.root).expanduser().resolve()

    def check_options(self, allowed: tuple[str, ...]) -> None:
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            raise DatasetError(
                f"dataset spec {self.text!r}: unknown option(s) {unknown}; {self.kind}: accepts {list(allowed) or 'none'}"
            )


def parse_spec(spec: str) -> Spec:
    """`coop:NAME:ROOT`, `torchvision:NAME:ROOT`, `imagefolder:ROOT`, `csv:FILE_OR_DIR`, `wds:PATTERN`,
    `hf:NAME_OR_PATH[:SPLIT]`, each with optional `?k=v&...`."""
    if not isinstance(spec, str) or ":" not in spec:
        raise DatasetError(
            f"dataset spec {spec!r}: expected KIND:..., KIND one of {', '.join(KINDS)} "
            "(e.g. coop:oxford_pets:/data/oxford_pets, imagefolder:/data/x, csv:/data/x/train.csv)"
        )
    body, options = spec, {}
    if "?" in spec:
        body, query = spec.rsplit("?", 1)
        for part in filter(None, query.split("&")):
            key, sep, value = part.partition("=")
            if not sep or not key:
                raise DatasetError(f"dataset spec {spec!r}: option {part!r} is not key=value")
            options[key.strip()] = value.strip()
    kind, rest = body.split(":", 1)
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise DatasetError(f"dataset spec {spec!r}: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind in _NAMED_KINDS:
        name, _, root = rest.partition(":")
        if not name:
            raise DatasetError(f"dataset spec {spec!r}: expected {kind}:NAME:ROOT")
        return Spec(spec, kind, name.strip().lower(), root, options)
    if not rest:
        raise DatasetError(f"dataset spec {spec!r}: expected {kind}:PATH")
    return Spec(spec, kind, "", rest, options)
