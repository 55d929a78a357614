"""Structural descriptors of an aggregate (paper Eqs. 3–5, 17–19; SPEC §5).

All descriptors come from the contact graph: particles are nodes, and two particles are joined
when ‖x_i − x_j‖ ≤ 1.01 (r_i + r_j) (Eq. 2). Observable clusters are the connected components of
the subgraph of one material (maximal connected same-label subsets, Sec. 2.2.1). :func:`describe`
finds them with a union–find over the contact pairs (:func:`component_sizes`); the graph itself
is available as a networkx graph (:func:`contact_graph`, :func:`observable_clusters`), which is
imported only there: networkx takes longer to import than describing a hundred aggregates.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from hagg_tf.model.aggregate import Aggregate
from hagg_tf.model.parameters import TIO2, WO3

CONTACT_TOLERANCE = 1.01
FRACTAL_PREFACTOR = 1.3


@dataclasses.dataclass(frozen=True)
class Descriptors:
    """Descriptors of one aggregate.

    Attributes:
        size: N, the number of particles.
        mixing_ratio: ρ(A), the fraction of WO3 particles (Eq. 3).
        radius_of_gyration: R_g with masses m_i ∝ r_i³ (Eq. 4), nm.
        fractal_dimension: D_f(A) of Eq. 5 with k_f = 1.3 and a the mean radius; NaN when
            R_g ≤ a (one or two particles), where Eq. 5 is undefined.
        tio2_cluster_size: S_TiO2 (Eq. 17), mean size of observable TiO2 clusters; NaN when the
            aggregate has no TiO2.
        wo3_cluster_size: the same for WO3 (the quantity of the paper's Fig. 5); NaN without WO3.
        hetero_coordination: Z_hetero (Eq. 18), 2·#(WO3–TiO2 contacts)/N.
        total_coordination: Z_total (Eq. 19), 2·#contacts/N.
        connected: whether the contact graph is connected (every generated aggregate is).
    """

    size: int
    mixing_ratio: float
    radius_of_gyration: float
    fractal_dimension: float
    tio2_cluster_size: float
    wo3_cluster_size: float
    hetero_coordination: float
    total_coordination: float
    connected: bool

    @property
    def homogeneous(self) -> bool:
        """True for ρ(A) ∈ {0, 1}, the positive class of CNN^ρ_class."""
        return self.mixing_ratio in (0.0, 1.0)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def contact_pairs(positions: np.ndarray, radii: np.ndarray,
                  tolerance: float = CONTACT_TOLERANCE) -> np.ndarray:
    """(E, 2) index pairs i < j of touching particles, ‖x_i − x_j‖ ≤ tolerance·(r_i + r_j)."""
    squared_distances = ((positions[:, None, :] - positions[None, :, :]) ** 2).sum(axis=2)
    reach = tolerance * (radii[:, None] + radii[None, :])
    first, second = np.nonzero(np.triu(squared_distances <= reach ** 2, k=1))
    return np.stack([first, second], axis=1)


def overlapping_pairs(positions: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(E, 2) index pairs i < j that overlap, ‖x_i − x_j‖ < r_i + r_j (Sec. 2.1.1)."""
    squared_distances = ((positions[:, None, :] - positions[None, :, :]) ** 2).sum(axis=2)
    limit = radii[:, None] + radii[None, :]
    first, second = np.nonzero(np.triu(squared_distances < limit ** 2, k=1))
    return np.stack([first, second], axis=1)


def contact_graph(aggregate: Aggregate, tolerance: float = CONTACT_TOLERANCE) -> "nx.Graph":
    """networkx graph of the aggregate: nodes 0..N−1 with attribute ``label``, contact edges."""
    import networkx as nx

    graph = nx.Graph()
    graph.add_nodes_from((node, {"label": int(label)}) for node, label in enumerate(aggregate.labels))
    graph.add_edges_from(contact_pairs(aggregate.positions, aggregate.radii, tolerance).tolist())
    return graph


def observable_clusters(aggregate: Aggregate, label: int,
                        graph: "nx.Graph | None" = None) -> list[set[int]]:
    """Maximal connected subsets of particles with material ``label`` (sets of indices)."""
    import networkx as nx

    graph = graph if graph is not None else contact_graph(aggregate)
    nodes = np.flatnonzero(aggregate.labels == label).tolist()
    return [set(component) for component in nx.connected_components(graph.subgraph(nodes))]


def radius_of_gyration(positions: np.ndarray, radii: np.ndarray) -> float:
    """R_g of Eq. 4 with masses m_i ∝ r_i³ (equal density), nm."""
    masses = radii ** 3
    center = masses @ positions / masses.sum()
    return math.sqrt(masses @ ((positions - center) ** 2).sum(axis=1) / masses.sum())


def fractal_dimension(positions: np.ndarray, radii: np.ndarray,
                      fractal_prefactor: float = FRACTAL_PREFACTOR) -> float:
    """D_f(A) of Eq. 5: log(N/k_f) / log(R_g/a), a the mean radius; NaN where R_g ≤ a."""
    gyration = radius_of_gyration(positions, radii)
    mean_radius = radii.mean()
    if gyration <= mean_radius:
        return math.nan
    return math.log(radii.shape[0] / fractal_prefactor) / math.log(gyration / mean_radius)


def component_sizes(count: int, pairs: np.ndarray, members: np.ndarray | None = None
                    ) -> list[int]:
    """Sizes of the connected components of a graph given by its edges (union–find).

    Args:
        count: N, nodes 0..N−1.
        pairs: (E, 2) edges, e.g. :func:`contact_pairs`.
        members: (N,) bool, the nodes of the subgraph to take (with the edges between them:
            an observable cluster's material); None: all nodes.

    Returns:
        The sizes of the subgraph's components, in order of their smallest node.
    """
    members = np.ones(count, bool) if members is None else np.asarray(members, bool)
    kept = pairs[members[pairs[:, 0]] & members[pairs[:, 1]]] if len(pairs) else pairs
    parent = list(range(count))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving keeps the trees flat
            node = parent[node]
        return node

    for first, second in kept.tolist():
        first, second = root(first), root(second)
        if first != second:
            parent[max(first, second)] = min(first, second)
    sizes: dict[int, int] = {}
    for node in np.flatnonzero(members).tolist():
        top = root(node)
        sizes[top] = sizes.get(top, 0) + 1
    return list(sizes.values())


def describe(aggregate: Aggregate, fractal_prefactor: float = FRACTAL_PREFACTOR,
             tolerance: float = CONTACT_TOLERANCE) -> Descriptors:
    """All structural descriptors of ``aggregate`` (see ``Descriptors``)."""
    size = aggregate.size
    labels = aggregate.labels
    edges = contact_pairs(aggregate.positions, aggregate.radii, tolerance).reshape(-1, 2)
    hetero_contacts = int(np.count_nonzero(labels[edges[:, 0]] != labels[edges[:, 1]]))

    def mean_cluster_size(label: int) -> float:
        sizes = component_sizes(size, edges, labels == label)
        return float(np.mean(sizes)) if sizes else math.nan

    return Descriptors(
        size=size,
        mixing_ratio=float(np.count_nonzero(labels == WO3)) / size,
        radius_of_gyration=radius_of_gyration(aggregate.positions, aggregate.radii),
        fractal_dimension=fractal_dimension(aggregate.positions, aggregate.radii, fractal_prefactor),
        tio2_cluster_size=mean_cluster_size(TIO2),
        wo3_cluster_size=mean_cluster_size(WO3),
        hetero_coordination=2.0 * hetero_contacts / size,
        total_coordination=2.0 * edges.shape[0] / size,
        connected=len(component_sizes(size, edges)) == 1,
    )


def summarize(descriptors: list[Descriptors]) -> dict[str, dict[str, float]]:
    """Mean, s.d. and count of every numeric descriptor over many aggregates.

    NaN values (S_TiO2 of an aggregate without TiO2, say) are left out of that descriptor's
    mean and s.d. explicitly, and ``count`` says how many aggregates entered it.
    """
    summary = {}
    for field in dataclasses.fields(Descriptors):
        if field.name == "connected":
            continue
        values = np.array([getattr(item, field.name) for item in descriptors], dtype=np.float64)
        finite = values[np.isfinite(values)]
        summary[field.name] = {
            "mean": float(finite.mean()) if finite.size else math.nan,
            "std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
            "count": int(finite.size),
        }
    return summary
