"""Structured pruning engine: dependency analysis, channel groups, physical slimming.

Public API::

    groups = channel_groups(model, example_inputs, ignore=())     # coupled channel groups
    slim_model = slim(model, example_inputs, ratio=0.5, criterion="l1", round_to=1)
    slim_model = slim_with_plan(model, example_inputs, {group_id: LongTensor(removed)}, groups)
    slim_report(slim_model)        # groups slim froze because the slim model failed validation
    slim(model, Examples([inputs_a, inputs_b]), ratio=0.5)          # prunable on every input
    print(explain(model, example_inputs))                          # which groups are frozen, and why
    err = check_exact(model, slim_model, inputs=example_inputs)    # < 1e-5 when correct
    save_pruned(slim_model, "dir"); m = load_pruned("dir", fresh_model)

Layout (sub-packages by role): ``trace/`` records the forward and builds the channel
groups; ``rules/`` says how each op and module moves channels (a new rule goes there);
``selection/`` picks the channels (importance, planner, latency-aware); ``surgery/`` removes
them physically, validates the result and saves/loads it; ``prune.py`` is ``slim()``, the
front door that ties them together.

What is pruned: conv/linear channels with everything coupled to them (BN/LN/GN/RMSNorm
and library RMSNorms, residual additions incl. zero-padding shortcuts, whose padded-in
channels form groups of their own when the pad amounts are module attributes, concat/chunk
offsets, flatten into Linear, depthwise/grouped convs (inputs too: column ``q`` goes from
every conv group at once), transposed convs (``nn.ConvTranspose1d/2d/3d``, grouped too),
embeddings and tied LM heads, free parameters such as ViT cls/pos embeddings), functional
``F.conv1d/2d/3d``/``F.linear`` on module weights, also after element-wise transforms and
per-filter statistics (weight standardisation: outputs prune, inputs stay), functional
``F.batch_norm``/``instance_norm`` and, when an affine parameter is given and the size is
read from a shape, ``F.layer_norm``/``rms_norm``/``group_norm`` (``ops_norm``), channel
shuffles (view/unflatten + transpose/permute + merge, or stack of chunks: the same
positions go from every shuffle block) and ``pixel_shuffle``/``pixel_unshuffle``, and
attention heads as whole units (q/k/v reshaped into heads, rotary halves, grouped-query
attention, SDPA, nn.MultiheadAttention).
What is kept (never wrong, only less pruning): channels reaching a model output or an
ignored module, channels touched by ops without a rule (listed in ``analyse(...).unknown``),
positions picked by hard-coded indices, statistics over channels in custom code (the inputs
of a weight-standardised conv), functional channel norms without an affine parameter or
with a literal ``normalized_shape``, channels padded in by amounts that no module attribute
holds, RNN/LSTM/GRU modules. Kept channels still appear in groups (``prunable=False``):
every output row of every nn.Conv*/Linear is in exactly one group (transposed convs and
functional convs appear in ``params``, their frozen rows in no group).
"""
from .trace.capture import TraceError
from .trace.examples import Examples, several
from .surgery.exactness import check_exact, reference_model
from .trace.explain import Explanation, explain
from .surgery.fallback import slim_report
from .trace.groups import ChannelGroup, channel_groups
from .selection.importance import CRITERIA, group_scores, register_criterion
from .surgery.plan import apply_plan, get_plan
from .selection.planner import plan_removal
from .prune import slim
from .surgery.saveload import load_pruned, save_pruned
from .surgery.slim import removal_plan, slim_with_plan

__all__ = ["CRITERIA", "ChannelGroup", "Examples", "Explanation", "TraceError", "apply_plan", "channel_groups",
           "check_exact", "explain", "get_plan", "group_scores", "load_pruned", "plan_removal", "reference_model",
           "register_criterion", "removal_plan", "save_pruned", "several", "slim", "slim_report", "slim_with_plan"]
