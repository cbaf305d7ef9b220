"""Channel ablation of one layer: the exact and fast engine behind AIS.

For an image ``x`` and a target :class:`torch.nn.Conv2d`, the ablated
prediction for channel ``c`` is the model's output when that conv's output
channel ``c`` is exactly zero (its ``weight[c]`` and ``bias[c]`` set to zero),
before whatever follows it (ReLU, BatchNorm, pooling, ...). A *target*
callable maps the model's output ``(N, ...)`` to one scalar per image ``(N,)``.

:class:`ChannelAblation` computes all channels of a batch of images without
ever writing into the model's weights, by one of three paths (all equal to
:func:`naive_ablation` up to float32 rounding):

``lowrank``
    Everything between the conv and the first ``nn.Linear`` acts channel by
    channel (ReLU, eval BatchNorm2d, pooling, Flatten, eval Dropout, ...), so
    zeroing channel ``c`` changes only block ``c`` of the Linear's input
    ``g``. One ordinary forward pass captures ``A`` (the conv output), ``g``
    and ``z = W g + b``; then for every channel
    ``z_c = z - W[:, block_c] @ (g_c - g0_c)`` (``g0_c``: the block of an
    all-zero channel, e.g. ``relu(bn(0))`` pooled) and only the layers after
    the first Linear run, on ``(N * C, out)`` rows.
``tail``
    The rest of the network after the conv is a function of the conv output
    alone (no skip connection across it): the network runs once up to the
    conv, then only the tail runs on ``(N * K, C, H, W)`` copies of ``A``,
    copy ``k`` with channel ``c_k`` zeroed.
``generic``
    Any model (ResNets, ...): the whole model runs on ``N * K`` copies of the
    images with a forward hook on the conv that returns its output with
    channel ``c_k`` zeroed in copy ``k``. Slower, but needs nothing from the
    model's structure.

``lowrank`` and ``tail`` cut the network with :mod:`torch.fx`; a model that
cannot be traced falls back to ``generic``. Each call checks that the cut
network reproduces the model's own prediction, so a cut that does not match
the model's ``forward`` is an error, never a silently wrong table.

Modules: :mod:`~ais.ablation.engine` (:class:`ChannelAblation`),
:mod:`~ais.ablation.cuts` (the torch.fx cuts), :mod:`~ais.ablation.naive`
(the reference), :mod:`~ais.ablation.table` (the output table).
"""

from ais.ablation.engine import DEFAULT_MEMORY_BUDGET, PATHS, ChannelAblation
from ais.ablation.naive import naive_ablation
from ais.ablation.table import ablate_batches, ablation_table

__all__ = ["DEFAULT_MEMORY_BUDGET", "PATHS", "ChannelAblation", "ablate_batches", "ablation_table", "naive_ablation"]
