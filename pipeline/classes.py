"""Named and merged classes: a table mapping each cluster 1..K of a model to a class 1..M.

A class holds one or more clusters and may have a name and a display colour (``#rrggbb``); a
class without a name is called ``cluster N`` after its cluster (outputs call the glass class
``background``, as for clusters), and one without a colour gets its colour per output (see
:mod:`pixseg.colours`). Classes are numbered 1..M by their first (smallest) cluster id, so the
numbering depends only on which clusters go together. Label 0 (masked) stays 0.

Tables are made by editing another table (``pixseg classes --name/--merge/--colour``, see
:func:`edit_classes`) or read from a small YAML document (:func:`classes_from_mapping`). Both
check every value and raise :class:`~pixseg.errors.ParameterError` naming it. This module is
pure: no files, no dask; :func:`map_clusters` is the per-chunk cluster -> class lookup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixseg.errors import ParameterError

#: Longest class name.
MAX_NAME_CHARS = 64
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
_CLUSTER_LIST = re.compile(r"\d+(,\d+)*")


@dataclass(frozen=True)
class PixelClass:
    """One class: its clusters (ascending), and optionally a name and a ``#rrggbb`` colour."""

    clusters: tuple[int, ...]
    name: str | None = None
    colour: str | None = None

    @property
    def title(self) -> str:
        """The name, else ``cluster N`` (``clusters N+M`` for an unnamed merge)."""
        if self.name is not None:
            return self.name
        if len(self.clusters) == 1:
            return f"cluster {self.clusters[0]}"
        return "clusters " + "+".join(str(c) for c in self.clusters)


@dataclass(frozen=True)
class ClassTable:
    """Every cluster 1..``n_clusters`` in exactly one class; ``classes[i]`` is class ``i + 1``.

    Build one with :func:`make_class_table`, which checks and orders the classes.
    """

    n_clusters: int
    classes: tuple[PixelClass, ...]

    @property
    def n_classes(self) -> int:
        """M, the number of classes."""
        return len(self.classes)

    @property
    def dtype(self) -> np.dtype:
        """The label dtype of class ids: uint8 for M <= 255, uint16 above."""
        return np.dtype(np.uint8 if self.n_classes <= 255 else np.uint16)

    def lookup(self) -> np.ndarray:
        """Shape (K + 1,), :attr:`dtype`: entry ``c`` is cluster ``c``'s class id, entry 0 is 0."""
        table = np.zeros(self.n_clusters + 1, dtype=self.dtype)
        for class_id, pixel_class in enumerate(self.classes, start=1):
            table[list(pixel_class.clusters)] = class_id
        return table

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in model schema 3 (``id`` is informative: the order decides)."""
        return {
            "n_clusters": self.n_clusters,
            "classes": [
                {"id": i, "clusters": list(c.clusters), "name": c.name, "colour": c.colour}
                for i, c in enumerate(self.classes, start=1)
            ],
        }

    @classmethod
    def from_dict(cls, data: Any, *, n_clusters: int) -> ClassTable:
        """Inverse of :meth:`to_dict`, checked against a model of ``n_clusters`` clusters.

        Raises
        ------
        ValueError
            Naming the first bad value.
        """
        if not isinstance(data, Mapping) or data.get("n_clusters") != n_clusters:
            raise ValueError(f"field 'classes' must describe the model's {n_clusters} clusters")
        entries = data.get("classes")
        if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
            raise ValueError("field 'classes.classes' must be a list of objects")
        classes = []
        for entry in entries:
            clusters = entry.get("clusters")
            if not isinstance(clusters, list) or not clusters or not all(type(c) is int for c in clusters):
                raise ValueError(f"a class's 'clusters' must be a list of cluster ids, got {clusters!r:.60}")
            name, colour = entry.get("name"), entry.get("colour")
            classes.append(
                PixelClass(
                    tuple(clusters),
                    None if name is None else check_name(name, "a class name"),
                    None if colour is None else check_colour(colour, "a class colour"),
                )
            )
        try:
            table = make_class_table(n_clusters, classes)
        except ParameterError as err:
            raise ValueError(str(err)) from err
        if [c.clusters for c in table.classes] != [tuple(sorted(c.clusters)) for c in classes]:
            raise ValueError("field 'classes.classes' must list the classes by their first cluster id")
        return table


def make_class_table(n_clusters: int, classes: Iterable[PixelClass]) -> ClassTable:
    """A checked table: ``classes`` sorted by first cluster id, each cluster not listed in a class
    of its own (unnamed, no colour).

    Raises
    ------
    ParameterError
        If a cluster id is outside 1..``n_clusters`` or in two classes, or two classes share a name.
    """
    owner: dict[int, str] = {}
    named: dict[str, str] = {}
    kept = []
    for pixel_class in classes:
        for cluster in pixel_class.clusters:
            _check_cluster(cluster, n_clusters, pixel_class.title)
            if cluster in owner:
                raise ParameterError(
                    f"cluster {cluster} is in two classes: {owner[cluster]!r} and {pixel_class.title!r}"
                )
            owner[cluster] = pixel_class.title
        if pixel_class.name is not None:
            if pixel_class.name in named:
                raise ParameterError(f"class name {pixel_class.name!r} is given twice; merge its clusters instead")
            named[pixel_class.name] = pixel_class.title
        kept.append(PixelClass(tuple(sorted(pixel_class.clusters)), pixel_class.name, pixel_class.colour))
    kept += [PixelClass((c,)) for c in range(1, n_clusters + 1) if c not in owner]
    return ClassTable(n_clusters, tuple(sorted(kept, key=lambda c: c.clusters[0])))


def identity_table(n_clusters: int) -> ClassTable:
    """Each cluster its own unnamed class."""
    return make_class_table(n_clusters, ())


@dataclass(frozen=True)
class ClassEdits:
    """Edits of a class table, as ``pixseg classes`` takes them.

    Attributes
    ----------
    names : sequence of (cluster, name)
        ``--name C=NAME``: cluster C leaves its class for a class of its own called NAME.
    merges : sequence of (clusters, name)
        ``--merge A,B=NAME``: the clusters leave their classes for one class called NAME.
    colours : sequence of (class, colour)
        ``--colour NAME=#rrggbb``: the colour of the class called NAME (or holding cluster NAME,
        when NAME is a number), after the other edits.
    """

    names: Sequence[tuple[int, str]] = ()
    merges: Sequence[tuple[tuple[int, ...], str]] = ()
    colours: Sequence[tuple[str, str]] = ()

    @property
    def empty(self) -> bool:
        """Whether there is nothing to edit."""
        return not (self.names or self.merges or self.colours)


def parse_edits(names: Sequence[str], merges: Sequence[str], colours: Sequence[str]) -> ClassEdits:
    """:class:`ClassEdits` from the ``--name``, ``--merge`` and ``--colour`` values.

    Raises
    ------
    ParameterError
        For a value not of the form ``C=NAME``, ``A,B=NAME`` or ``NAME=#rrggbb``.
    """
    parsed_names = []
    for text in names:
        key, name = _split(text, "--name", "CLUSTER=NAME")
        if not key.isdigit():
            raise ParameterError(f"--name {text!r}: expected CLUSTER=NAME with a cluster id, e.g. 1=nuclei")
        parsed_names.append((int(key), check_name(name, f"--name {text!r}")))
    parsed_merges = []
    for text in merges:
        key, name = _split(text, "--merge", "A,B=NAME")
        if not _CLUSTER_LIST.fullmatch(key.replace(" ", "")):
            raise ParameterError(f"--merge {text!r}: expected cluster ids A,B,...=NAME, e.g. 3,4=background")
        parsed_merges.append(
            (tuple(int(c) for c in key.replace(" ", "").split(",")), check_name(name, f"--merge {text!r}"))
        )
    parsed_colours = []
    for text in colours:
        key, colour = _split(text, "--colour", "NAME=#rrggbb")
        parsed_colours.append((key, check_colour(colour, f"--colour {text!r}")))
    return ClassEdits(tuple(parsed_names), tuple(parsed_merges), tuple(parsed_colours))


def _split(text: str, flag: str, form: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ParameterError(f"{flag} {text!r}: expected {form}")
    return key.strip(), value.strip()


def check_name(name: Any, where: str) -> str:
    """``name`` if it is a usable class name: text, 1..``MAX_NAME_CHARS`` printable characters."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ParameterError(
            f"{where}: a class name must be 1 to {MAX_NAME_CHARS} printable characters, got {name!r:.80}"
        )
    return name.strip()


def check_colour(colour: Any, where: str) -> str:
    """``colour`` as lower-case ``#rrggbb``."""
    if not isinstance(colour, str) or not _COLOUR.fullmatch(colour):
        raise ParameterError(f"{where}: expected a colour #rrggbb, got {colour!r:.40}")
    return colour.lower()


def _check_cluster(cluster: int, n_clusters: int, where: str) -> None:
    if not 1 <= cluster <= n_clusters:
        raise ParameterError(f"{where}: cluster {cluster} does not exist; the model has clusters 1 to {n_clusters}")


def edit_classes(table: ClassTable | None, edits: ClassEdits, *, n_clusters: int) -> ClassTable:
    """``table`` (None: each cluster its own class) with ``edits`` applied.

    Clusters named or merged leave their classes (a class left empty disappears; one that keeps
    clusters keeps its name and colour); each edit makes one class. A new class takes the colour
    of the class of the same name it replaces, if any; then the ``--colour`` edits are applied.

    Raises
    ------
    ParameterError
        For an unknown cluster id, a cluster edited twice, a name given twice or already naming a
        class that keeps clusters, or a colour for a class that does not exist.
    """
    base = table or identity_table(n_clusters)
    groups: list[tuple[tuple[int, ...], str, str]] = [
        ((cluster,), name, f"--name {cluster}={name}") for cluster, name in edits.names
    ]
    groups += [(clusters, name, f"--merge {','.join(map(str, clusters))}={name}") for clusters, name in edits.merges]
    edited: dict[int, str] = {}
    new_names: dict[str, str] = {}
    for clusters, name, text in groups:
        for cluster in clusters:
            _check_cluster(cluster, n_clusters, text)
            if cluster in edited:
                raise ParameterError(f"cluster {cluster} is given twice: in {edited[cluster]!r} and {text!r}")
            edited[cluster] = text
        if name in new_names:
            raise ParameterError(
                f"class name {name!r} is given twice ({new_names[name]!r}, {text!r}); merge the clusters with --merge"
            )
        new_names[name] = text
    kept = []
    for pixel_class in base.classes:
        left = tuple(c for c in pixel_class.clusters if c not in edited)
        if left:
            kept.append(PixelClass(left, pixel_class.name, pixel_class.colour))
    kept_names = {c.name: c for c in kept if c.name is not None}
    old_colours = {c.name: c.colour for c in base.classes if c.name is not None}
    for name, text in new_names.items():
        if name in kept_names:
            raise ParameterError(
                f"{text}: class name {name!r} already names the class of clusters "
                f"{','.join(map(str, kept_names[name].clusters))}; add them to the merge"
            )
    classes = kept + [PixelClass(clusters, name, old_colours.get(name)) for clusters, name, _ in groups]
    result = make_class_table(n_clusters, classes)
    return _recolour(result, edits.colours)


def _recolour(table: ClassTable, colours: Sequence[tuple[str, str]]) -> ClassTable:
    """``table`` with the colour of the class named (or holding the cluster numbered) ``key`` set."""
    classes = list(table.classes)
    for key, colour in colours:
        index = next((i for i, c in enumerate(classes) if c.name == key), None)
        if index is None and key.isdigit():
            index = next((i for i, c in enumerate(classes) if int(key) in c.clusters), None)
        if index is None:
            known = ", ".join(repr(c.title) for c in classes)
            raise ParameterError(f"--colour {key}={colour}: no class is named {key!r} (the classes: {known})")
        classes[index] = PixelClass(classes[index].clusters, classes[index].name, colour)
    return ClassTable(table.n_clusters, tuple(classes))


def classes_from_mapping(data: Any, *, n_clusters: int, source: str) -> ClassTable:
    """A table from a class document (a parsed YAML file)::

        classes:
          nuclei: 1                  # a class of one cluster
          stroma: [2, 5]             # a merge
          background: {clusters: [3, 4], colour: "#dddddd"}

    Clusters not listed are classes of their own.

    Raises
    ------
    ParameterError
        Naming ``source`` and the bad entry.
    """
    if not isinstance(data, Mapping) or set(data) != {"classes"} or not isinstance(data["classes"], Mapping):
        raise ParameterError(f"{source}: expected one key 'classes' mapping class names to cluster ids")
    merges: list[tuple[tuple[int, ...], str]] = []
    colours: list[tuple[str, str]] = []
    for raw_name, value in data["classes"].items():
        name = check_name(raw_name, f"{source}: classes")
        where = f"{source}: class {name!r}"
        colour = None
        if isinstance(value, Mapping):
            unknown = set(value) - {"clusters", "colour"}
            if unknown or "clusters" not in value:
                raise ParameterError(f"{where}: expected keys 'clusters' and optionally 'colour', got {sorted(value)}")
            colour = value.get("colour")
            value = value["clusters"]
        clusters = [value] if type(value) is int else value
        if not isinstance(clusters, list) or not clusters or not all(type(c) is int for c in clusters):
            raise ParameterError(f"{where}: expected a cluster id or a list of them, got {value!r:.60}")
        merges.append((tuple(clusters), name))
        if colour is not None:
            colours.append((name, check_colour(colour, where)))
    return edit_classes(None, ClassEdits(merges=merges, colours=colours), n_clusters=n_clusters)


def map_clusters(clusters: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    """Class ids of a chunk of cluster ids: ``lookup[clusters]`` (0 stays 0).

    Parameters
    ----------
    clusters : numpy.ndarray
        Shape (h, w), uint8 or uint16 cluster ids 0..K.
    lookup : numpy.ndarray
        Shape (K + 1,), from :meth:`ClassTable.lookup`.

    Returns
    -------
    numpy.ndarray
        Shape (h, w), ``lookup.dtype``.
    """
    return np.take(lookup, clusters)
