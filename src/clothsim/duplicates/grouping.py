"""Duplicate groups from candidate pairs, without chaining unrelated items together.

Connected components over "cosine >= threshold" would put A, B and C in one group when A~B and B~C
although A and C are not alike (a front view, a three-quarter view, a back view). Here pairs are taken
best first, and two groups are merged only if *every* member of one is at least ``threshold`` from every
member of the other (complete linkage on the sparse pair graph): each group's members are then all
pairwise near-duplicates. The check reads the members' vectors, so a group may not grow past
``max_group`` members (a merge beyond it is refused and counted).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from clothsim.duplicates.neighbours import Pairs

#: Largest group the linkage check lets grow (its cost is the product of the two groups' sizes).
MAX_GROUP = 1000


@dataclass
class DuplicateGroup:
    """Items that are all near-duplicates of one another.

    Attributes:
        members: Item ids, the representative first, then by falling score.
        scores: Each member's cosine to the representative (1.0 for itself).
        representative: The member closest to all others (highest mean cosine; lowest id on a tie).
        exact: Whether every member is the same file (by content hash).
    """

    members: list[int]
    scores: list[float]
    representative: int
    exact: bool = False

    def __len__(self) -> int:
        return len(self.members)


@dataclass
class Grouping:
    """The groups (largest first) and what the chaining guard refused."""

    groups: list[DuplicateGroup]
    refused_merges: int = 0
    capped_merges: int = 0
    group_of: dict[int, int] = field(default_factory=dict)


def group_pairs(pairs: Pairs, vectors_of: Callable[[np.ndarray], np.ndarray], threshold: float,
                exact_groups: Sequence[Sequence[int]] = (), max_group: int = MAX_GROUP) -> Grouping:
    """Group items so that every two members of a group have cosine >= ``threshold``.

    Args:
        pairs: Candidate pairs, best first (see :func:`clothsim.duplicates.neighbours.candidate_pairs`).
        vectors_of: The unit vectors of a list of ids (from the store).
        threshold: The least cosine of two near-duplicates.
        exact_groups: Ids known to be byte-identical files; each is a group to start from.
        max_group: The largest group allowed.
    """
    parent: dict[int, int] = {}
    members: dict[int, list[int]] = {}
    exact_roots: set[int] = set()

    def root(item: int) -> int:
        while parent.get(item, item) != item:
            parent[item] = parent.get(parent[item], parent[item])
            item = parent[item]
        return item

    def join(a: int, b: int) -> None:
        keep, gone = (a, b) if len(members.get(a, [a])) >= len(members.get(b, [b])) else (b, a)
        parent[gone] = keep
        members[keep] = members.pop(keep, [keep]) + members.pop(gone, [gone])

    for group in exact_groups:
        ids = [int(i) for i in group]
        for other in ids[1:]:
            join(root(ids[0]), root(other))
        exact_roots.add(root(ids[0]))
    refused = capped = 0
    for a, b in zip(pairs.a.tolist(), pairs.b.tolist()):
        ra, rb = root(a), root(b)
        if ra == rb:
            continue
        group_a, group_b = members.get(ra, [ra]), members.get(rb, [rb])
        if len(group_a) + len(group_b) > max_group:
            capped += 1
            continue
        if len(group_a) > 1 or len(group_b) > 1:
            cross = vectors_of(np.asarray(group_a)) @ vectors_of(np.asarray(group_b)).T
            if float(cross.min()) < threshold:
                refused += 1  # one pair is alike, the groups as a whole are not: no chaining
                continue
        exact = ra in exact_roots and rb in exact_roots
        join(ra, rb)
        exact_roots.discard(ra)
        exact_roots.discard(rb)
        if exact:
            exact_roots.add(root(a))
    groups = [_finish(ids, vectors_of, root(ids[0]) in exact_roots) for ids in members.values() if len(ids) > 1]
    groups.sort(key=lambda g: (-len(g), g.representative))
    group_of = {item: number for number, group in enumerate(groups) for item in group.members}
    return Grouping(groups, refused, capped, group_of)


def _finish(ids: list[int], vectors_of: Callable[[np.ndarray], np.ndarray], exact: bool) -> DuplicateGroup:
    ordered = np.asarray(sorted(ids), dtype=np.int64)
    vectors = vectors_of(ordered)
    similarity = vectors @ vectors.T
    centre = int(np.argmax(similarity.mean(axis=1)))  # argmax takes the first (lowest id) on a tie
    scores = similarity[centre]
    order = np.lexsort((ordered, -scores))
    order = np.concatenate([[centre], order[order != centre]])
    return DuplicateGroup([int(ordered[i]) for i in order], [float(min(1.0, scores[i])) for i in order],
                          int(ordered[centre]), exact)
