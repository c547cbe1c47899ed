"""Channel slots: the bookkeeping behind the dependency analysis.

Every channel that some layer creates (a conv/linear output row, an embedding column,
one index along one dimension of a parameter used in a functional op) gets an integer
*slot*. Each traced tensor carries *entries*: ``(dims, slots)`` where ``dims`` is a sorted
tuple of tensor dimensions and ``slots`` an int64 array shaped like those dimensions that
says which slot sits at each position. Most entries span one dimension (a channel dim);
attention reshapes create joint entries such as ``(heads, head_dim)``.

When two positions must be the same channel (residual additions, q.k contractions, a
norm or consumer seeing a channel) their slots are *joined*; joins are collected as edge
lists and resolved once with ``scipy.sparse.csgraph.connected_components`` (fast even for
BERT-sized graphs). Slot ``FROZEN`` (0) is special: whatever is joined to it is never
pruned (model outputs, unknown ops, ignored modules, padded channels whose amounts no
attribute holds).

*Coarse* slots stand for a whole block of fine slots (one attention head after q.k
contracted the head dimension). Joining two coarse slots later joins their blocks
element-wise; see ``groups.resolve``.
"""
from __future__ import annotations

import numpy as np

FROZEN = 0


class SlotBook:
    def __init__(self):
        self.next = 1
        self._a: list[np.ndarray] = []
        self._b: list[np.ndarray] = []
        self.coarse: dict[int, np.ndarray] = {}  # coarse slot -> block of fine slots
        self.tie_row = np.full(1024, -1, dtype=np.int64)  # slot -> id of its tie row (-1: none)
        self._n_ties = 0
        self._coarse_key: dict[bytes, int] = {}
        # (index of the first join array made while it ran, what was running): lets ``explain``
        # say why slots were frozen without every freeze call passing a reason
        self.marks: list[tuple[int, str]] = []

    def note(self, what: str) -> None:
        """Name what the following joins/freezes come from (an op, a leaf module, the outputs)."""
        if not self.marks or self.marks[-1][1] != what:
            self.marks.append((len(self._a), what))

    def new(self, n: int) -> np.ndarray:
        out = np.arange(self.next, self.next + n, dtype=np.int64)
        self.next += n
        return out

    def join(self, a: np.ndarray, b: np.ndarray) -> None:
        a = np.asarray(a, dtype=np.int64).ravel()
        b = np.asarray(b, dtype=np.int64).ravel()
        if a.shape != b.shape:
            raise AssertionError(f"join of mismatched slot arrays {a.shape} vs {b.shape}")
        self._a.append(a)
        self._b.append(b)

    def freeze(self, a: np.ndarray) -> None:
        a = np.asarray(a, dtype=np.int64).ravel()
        self.join(a, np.zeros_like(a))

    def coarse_of(self, arr: np.ndarray, keep_axes: tuple[int, ...]) -> np.ndarray:
        """Coarse slots for ``arr`` reduced onto ``keep_axes`` (one per kept index)."""
        other = [i for i in range(arr.ndim) if i not in keep_axes]
        moved = np.transpose(arr, list(keep_axes) + other)
        kept_shape = moved.shape[: len(keep_axes)]
        rows = moved.reshape(int(np.prod(kept_shape)) if kept_shape else 1, -1)
        out = np.empty(rows.shape[0], dtype=np.int64)
        for i, row in enumerate(rows):
            if np.isin(row, list(self.coarse)).any() if self.coarse else False:
                # a coarse slot of coarse slots: too deep to track, so keep it whole
                self.freeze(row)
                out[i] = FROZEN
                continue
            key = row.tobytes()
            c = self._coarse_key.get(key)
            if c is None:
                c = int(self.new(1)[0])
                self.coarse[c] = row.copy()
                self._coarse_key[key] = c
            out[i] = c
        return out.reshape(kept_shape)

    def tie(self, rows: np.ndarray) -> None:
        """Each row of ``rows`` is a unit that is only ever removed whole (an attention head)."""
        if len(self.tie_row) < self.next:
            grown = np.full(max(self.next, 2 * len(self.tie_row)), -1, dtype=np.int64)
            grown[: len(self.tie_row)] = self.tie_row
            self.tie_row = grown
        ids = np.arange(self._n_ties, self._n_ties + len(rows))
        self._n_ties += len(rows)
        self.tie_row[rows] = ids[:, None]

    def internal(self, arr: np.ndarray, axis: int) -> bool:
        """True when every line of ``arr`` along ``axis`` lies inside one tie row: positions
        along that axis (within a head) are never removed one by one, so ops along it
        (rotary slicing, softmax, per-position scales) cannot be broken by pruning."""
        if arr.size == 0 or int(arr.max()) >= len(self.tie_row):
            return False
        ids = self.tie_row[arr]
        if (ids < 0).any():
            return False
        return bool(np.all(ids == np.take(ids, [0], axis=axis)))

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._a:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(self._a), np.concatenate(self._b)


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component label of every slot 0..n-1 given join edges a[i]-b[i]."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(g, directed=False)
    return labels
