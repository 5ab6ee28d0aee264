"""A memory bank of normal features: coreset subsampling plus k-nearest-neighbour search.

In eager CPU mode the search runs in faiss (exact ``IndexFlatL2``); when the model is being traced or
exported (and on GPU tensors) the same search is plain torch, so the exported graph needs no faiss.
"""

from __future__ import annotations

import torch
from anomalib.models.components import DynamicBufferMixin
from torch import nn

from anomalib_ext.components.coreset import greedy_coreset_indices


def _tracing() -> bool:
    compiler = torch.compiler
    exporting = getattr(compiler, "is_exporting", lambda: False)()
    return compiler.is_compiling() or exporting or torch.jit.is_tracing()


def torch_knn(queries: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-NN by the |q|^2 - 2 q.b + |b|^2 expansion (one matmul, no Q x M x D temporary)."""
    squared = (
        queries.pow(2).sum(1, keepdim=True) - 2 * queries @ bank.T + bank.pow(2).sum(1).unsqueeze(0)
    ).clamp_min(0)
    distances, indices = torch.topk(squared, k, dim=1, largest=False)
    return distances.sqrt(), indices


class MemoryBank(DynamicBufferMixin, nn.Module):
    """Normal features ``(M, D)`` kept as a checkpointed buffer, searched by faiss or torch.

    Args:
        use_faiss: search with faiss in eager CPU mode (falls back to torch when tracing/exporting).
    """

    def __init__(self, use_faiss: bool = True) -> None:
        super().__init__()
        self.use_faiss = use_faiss
        self.register_buffer("bank", torch.empty(0))
        self._index = None
        self._indexed_version = None

    def __len__(self) -> int:
        return int(self.bank.shape[0]) if self.bank.ndim == 2 else 0

    def fit(
        self,
        features: torch.Tensor,
        sampling_ratio: float | None = 0.01,
        coreset_size: int | None = None,
        seed: int | None = 0,
        progress: bool = True,
    ) -> torch.Tensor:
        """Keep a greedy k-center coreset of ``features`` (N, D); ``sampling_ratio=None`` keeps all."""
        if sampling_ratio is None and coreset_size is None:
            chosen = features
        else:
            indices = greedy_coreset_indices(features, sampling_ratio, coreset_size, seed=seed, progress=progress)
            chosen = features[indices]
        self.bank = chosen.detach().float().contiguous()
        self._index = None
        return self.bank

    def _faiss_index(self):
        import faiss

        version = (self.bank.data_ptr(), tuple(self.bank.shape))
        if self._index is None or self._indexed_version != version:
            index = faiss.IndexFlatL2(self.bank.shape[1])
            index.add(self.bank.numpy())
            self._index, self._indexed_version = index, version
        return self._index

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances (L2, not squared) and indices of the ``k`` nearest bank features, each (Q, k)."""
        if len(self) == 0:
            raise RuntimeError("The memory bank is empty: fit it on normal features before searching.")
        k = min(k, len(self))
        eager_cpu = not _tracing() and queries.device.type == "cpu" and not queries.requires_grad
        if self.use_faiss and eager_cpu:
            squared, indices = self._faiss_index().search(queries.detach().float().contiguous().numpy(), k)
            return torch.from_numpy(squared).clamp_min_(0).sqrt_(), torch.from_numpy(indices)
        return torch_knn(queries.float(), self.bank, k)
