"""Op rules for mixture-of-experts layers: grouped matmuls over 3-D expert weights, and
tensors created in the shape of another (``zeros_like`` accumulators for routed outputs).

Expert weights stored as one ``(experts, out, in)`` parameter are recorded like any
parameter used outside a leaf (one slot set per dim, see ``Capture.get``): slicing dim 1
or 2 removes the same rows/columns from every expert, which is exact for every way the
experts are run (``w[e]`` then ``F.linear``, ``w[ids]`` then ``bmm``, ``torch._grouped_mm``),
because a token only ever meets one expert's slice of that shared dim. The expert dim is
contracted against the routing and never pruned. Routing ops over tokens (``index_add_``,
``gather``, ``x[token_idx]``) live in ``ops_index.py``.
"""
from __future__ import annotations

from ..trace.capture import flat_tensors
from .ops_common import _arg, _tensors
from .ops_contract import _contract, matmul


def grouped_mm(cap, name, args, kwargs, out):
    """``torch._grouped_mm(x, w, offs)`` / ``F.grouped_mm``: with ``x (S, K)``, ``w (E, K, N)``
    and ``offs`` (group ends along S), row ``s`` of ``x`` is multiplied by the weight of its
    group: ``out (S, N)``. K is contracted between x and every expert, N is every expert's
    output; the token dim S and the expert dim E are positions, never channels (E meets no
    partner and is frozen). Without ``offs``, a 3-D by 3-D call is a plain ``bmm``."""
    x, w = args[0], args[1]
    offs = _arg(args, kwargs, 2, "offs")
    o = flat_tensors(out)[0]
    if offs is None and x.dim() == 3 and w.dim() == 3:
        return matmul(cap, "bmm", (x, w), {}, out)
    if offs is not None and x.dim() == 2 and w.dim() == 3 and o.dim() == 2:
        cap.freeze_tensor(offs)
        res = _contract(cap, [(x, ["S", "K"]), (w, ["E", "K", "N"])], ["S", "N"], out)
        # the kernel needs 16-byte row strides: K and N must stay multiples of 16 bytes
        m = max(1, 16 // x.element_size())
        for dims, arr in cap.get(x) + cap.get(w) + res[0]:
            if dims in ((1,), (2,)):
                cap.multiple.append((arr.ravel(), m))
        return res
    for t in _tensors(args, kwargs):
        cap.freeze_tensor(t)  # other layouts (grouped weight gradients): not needed for inference
    return [[] for _ in flat_tensors(out)]


def like(cap, name, args, kwargs, out):
    """``zeros_like(x)``, ``ones_like``, ``full_like``...: the same value at every channel, in
    x's shape, so in the slim model it has x's slim shape: it carries x's channels (an
    accumulator that routed expert outputs are added into joins them to x's)."""
    x = args[0]
    o = flat_tensors(out)[0]
    if tuple(o.shape) != tuple(x.shape) or not o.is_floating_point():
        return None
    return [cap.get(x)]


MOE_RULES = {"_grouped_mm": grouped_mm, "grouped_mm": grouped_mm, "zeros_like": like, "ones_like": like,
             "full_like": like, "empty_like": like}
