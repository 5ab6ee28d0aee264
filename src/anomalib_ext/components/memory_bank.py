"""Memory banks of normal features: greedy k-center coresets, nearest-neighbour search, PatchCore's re-weighting.

One component for every memory-bank method. The bank is ``(G, M, D)``: ``G`` independent banks of
``M`` features searched in one batched matmul — ``G = 1`` is PatchCore's global bank, ``G`` = block
positions is AMFS's per-block banks. The search is plain torch (traceable, exportable with a dynamic
batch). In eager CPU mode, a single bank with many queries is searched by faiss (exact
``IndexFlatL2``) when faiss is installed: measured 1.3-7x faster from a thousand queries and a
million distances up (``tools/bench_knn.py``; 8192 queries against 12,000 features: 169 ms vs 628 ms);
below that torch is as fast or faster and needs no copy. Several banks (AMFS's blocks) are searched by
one batched torch matmul.
"""

from __future__ import annotations

import torch
from anomalib.models.components import DynamicBufferMixin
from torch import nn

from anomalib_ext.components.coreset import greedy_coreset_indices

# faiss searches a single bank when there are at least this many queries and queries x features reach this:
# there it was 1.3-7x faster than the torch search on the 2-core CPU; below, torch was as fast, and with
# few queries against a large bank faster (64 x 12,000: 3.0 ms vs 9.5 ms) (tools/bench_knn.py,
# docs/results/house/knn_torch_vs_faiss.json).
FAISS_MIN_QUERIES = 1024
FAISS_MIN_WORK = 2**20


def _tracing() -> bool:
    compiler = torch.compiler
    exporting = getattr(compiler, "is_exporting", lambda: False)()
    return compiler.is_compiling() or exporting or torch.jit.is_tracing()


def squared_distances(queries: torch.Tensor, banks: torch.Tensor) -> torch.Tensor:
    """(G, Q, D) x (G, M, D) -> (G, Q, M) squared L2 by the |q|^2 - 2 q.b + |b|^2 expansion (no Q x M x D temporary)."""
    return (
        queries.pow(2).sum(-1, keepdim=True) - 2 * queries @ banks.transpose(1, 2) + banks.pow(2).sum(-1).unsqueeze(1)
    ).clamp_min(0)


def torch_knn(queries: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-NN of (Q, D) queries in one (M, D) bank: L2 distances and indices, each (Q, k)."""
    distances, indices = torch.topk(squared_distances(queries[None], bank[None])[0], k, dim=1, largest=False)
    return distances.sqrt(), indices


def _faiss_available() -> bool:
    try:
        import faiss  # ruff: ignore[unused-import]
    except ImportError:
        return False
    return True


class MemoryBank(DynamicBufferMixin, nn.Module):
    """``G`` banks of normal features ``(G, M, D)``, kept as a checkpointed buffer.

    Args:
        use_faiss: let faiss search a single large bank in eager CPU mode (never while tracing or exporting).
    """

    def __init__(self, *, use_faiss: bool = True) -> None:
        super().__init__()
        self.use_faiss = use_faiss
        self.register_buffer("bank", torch.empty(0))
        self._index = None
        self._indexed_version: tuple | None = None

    @property
    def num_groups(self) -> int:
        """G, the number of independent banks (0 before fitting)."""
        return int(self.bank.shape[0]) if self.bank.ndim == 3 else 0

    def __len__(self) -> int:
        """M, the features per bank."""
        return int(self.bank.shape[1]) if self.bank.ndim == 3 else 0

    def fit(
        self,
        features: torch.Tensor,
        sampling_ratio: float | None = 0.01,
        *,
        seed: int = 0,
        progress: bool = False,
    ) -> torch.Tensor:
        """Keep a greedy k-center coreset of each group of ``features`` (G, N, D) (or (N, D): one group).

        Every group keeps ``max(1, int(N * sampling_ratio))`` features, selected with seed ``seed + g``;
        ``sampling_ratio=None`` keeps everything.
        """
        groups = features[None] if features.ndim == 2 else features
        if sampling_ratio is None:
            chosen = groups
        else:
            size = max(1, int(groups.shape[1] * sampling_ratio))
            chosen = torch.stack([
                group[greedy_coreset_indices(group, coreset_size=size, seed=seed + g, progress=progress)]
                for g, group in enumerate(groups)
            ])
        self.bank = chosen.detach().float().contiguous()
        self._index = None
        return self.bank

    def _check_fitted(self) -> None:
        if self.num_groups == 0:
            msg = "The memory bank is empty: fit it on normal features (train the model) before scoring."
            raise RuntimeError(msg)

    def _faiss_index(self):  # ruff: ignore[missing-return-type-private-function] - a faiss.IndexFlatL2
        import faiss

        version = (self.bank.data_ptr(), tuple(self.bank.shape))
        if self._index is None or self._indexed_version != version:
            index = faiss.IndexFlatL2(self.bank.shape[2])
            index.add(self.bank[0].numpy())
            self._index, self._indexed_version = index, version
        return self._index

    def _use_faiss(self, queries: torch.Tensor) -> bool:
        # Tracing first: a size check on a traced (symbolic) batch would add a guard to the exported graph.
        if not self.use_faiss or _tracing() or queries.device.type != "cpu" or queries.requires_grad:
            return False
        count = queries.shape[1]
        large = self.num_groups == 1 and count >= FAISS_MIN_QUERIES and count * len(self) >= FAISS_MIN_WORK
        return large and _faiss_available()

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """L2 distances (not squared) and indices of the ``k`` nearest features, each (G, Q, k), of (G, Q, D)."""
        self._check_fitted()
        k = min(k, len(self))
        if self._use_faiss(queries):
            squared, indices = self._faiss_index().search(queries[0].detach().float().contiguous().numpy(), k)
            return torch.from_numpy(squared).clamp_min_(0).sqrt_()[None], torch.from_numpy(indices)[None]
        squared, indices = squared_distances(queries, self.bank).topk(k, dim=2, largest=False)
        return squared.sqrt(), indices

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance to (not squared) and index of the nearest feature, each (G, Q), for (G, Q, D) queries."""
        self._check_fitted()
        if self._use_faiss(queries):
            distances, indices = self.search(queries, 1)
            return distances[..., 0], indices[..., 0]
        squared, indices = squared_distances(queries, self.bank).min(dim=2)
        return squared.sqrt(), indices

    def reweighted_max(
        self,
        queries: torch.Tensor,
        patch_scores: torch.Tensor,
        nearest_idx: torch.Tensor,
        *,
        num_neighbors: int,
    ) -> torch.Tensor:
        """PatchCore's image score per group: the worst patch re-weighted by the density of its bank neighbourhood.

        Args:
            queries: (G, B, P, D) patch features of B images.
            patch_scores: (G, B, P) distances to the nearest bank feature.
            nearest_idx: (G, B, P) index of that feature.
            num_neighbors: k, the neighbourhood of the worst patch's nearest feature.

        Returns:
            (G, B): ``(1 - softmax(d(worst, k neighbours))[0]) * worst``.
        """
        g, b, _, d = queries.shape
        worst, worst_pos = patch_scores.max(dim=2)  # (G, B)
        worst_query = queries.gather(2, worst_pos[..., None, None].expand(g, b, 1, d)).squeeze(2)
        worst_nn = nearest_idx.gather(2, worst_pos[..., None]).squeeze(2)  # (G, B)
        nn_feature = self.bank.gather(1, worst_nn[..., None].expand(g, b, d))  # (G, B, D)
        k = min(num_neighbors, len(self))
        support = squared_distances(nn_feature, self.bank).topk(k, dim=2, largest=False).indices  # (G, B, k)
        support_features = self.bank.gather(1, support.reshape(g, b * k, 1).expand(g, b * k, d)).reshape(g, b, k, d)
        distances = (worst_query[:, :, None] - support_features).pow(2).sum(-1).sqrt()  # (G, B, k)
        weight = 1 - torch.softmax(distances, dim=2)[..., 0]
        return weight * worst
