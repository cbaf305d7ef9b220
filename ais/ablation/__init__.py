"""Channel ablation of one layer: the exact and fast engine behind AIS.

For an image ``x`` and a target layer (an :class:`torch.nn.Conv2d`, a
residual block, a BatchNorm: any module whose output is ``(N, C, ...)``), the
ablated prediction for unit ``c`` is the model's output when channel ``c`` of
that layer's output is exactly zero (for a conv: its ``weight[c]`` and
``bias[c]`` set to zero), before whatever follows it (ReLU, BatchNorm, the
addition of a skip connection, pooling, ...). A *target* callable maps the
model's output ``(N, ...)`` to one scalar per image ``(N,)``.

:class:`ChannelAblation` computes all channels of a batch of images without
ever writing into the model's weights, by one of four paths (all equal to
:func:`naive_ablation` up to float rounding):

``lowrank``
    Everything between the layer and the first ``nn.Linear`` acts channel by
    channel (ReLU, eval BatchNorm2d, pooling, Flatten, eval Dropout, the
    addition of a tensor computed before the layer such as ResNet's
    identity, ...), so zeroing channel ``c`` changes only block ``c`` of the
    Linear's input ``g``. One ordinary forward pass captures ``A`` (the layer
    output), ``g`` and ``z = W g + b``; then for every channel
    ``z_c = z - W[:, block_c] @ (g_c - g0_c)`` (``g0_c``: the block of an
    all-zero channel, e.g. ``relu(bn(0) + identity)`` pooled) and only the
    layers after the first Linear run, on ``(N * C, out)`` rows.
``tail``
    The network runs once up to the layer, keeping the tensors computed
    before it that are read after it (skip connections: a residual block's
    input, a downsampled identity, DenseNet's concatenated features); then
    only the rest of the network runs on ``(N * K, C, H, W)`` copies of
    ``A``, copy ``k`` with channel ``c_k`` zeroed, beside the kept tensors.
``residual``
    A Vision Transformer block's units (its MLP hidden neurons or attention
    heads, :mod:`ais.families.vit`): the ablated copies of the residual
    stream are formed from the one ordinary pass (a neuron's removal is a
    rank-1 change of the block's output; a head's re-forms the block from its
    input) and only the later blocks and the head run on them; after the last
    block of a class-token head only the class token's stream
    (:mod:`~ais.ablation.residual`).
``generic``
    Any model: the whole model runs on ``N * K`` copies of the images with a
    forward hook on the layer that returns its output with channel ``c_k``
    zeroed in copy ``k``. For models torch.fx cannot trace, or a layer called
    more than once; the log and :meth:`ChannelAblation.describe` say why.

``lowrank`` and ``tail`` cut the network with :mod:`torch.fx` (the target
layer traced as one call); a model that cannot be traced falls back to
``generic``. Each call checks that the cut network reproduces the model's own
prediction, so a cut that does not match the model's ``forward`` is an error,
never a silently wrong table.

Modules: :mod:`~ais.ablation.engine` (:class:`ChannelAblation`),
:mod:`~ais.ablation.cuts` (the torch.fx cuts), :mod:`~ais.ablation.residual`
(the ViT residual stream), :mod:`~ais.ablation.naive`
(the reference), :mod:`~ais.ablation.table` (the output table).
"""

from ais.ablation.engine import DEFAULT_MEMORY_BUDGET, PATHS, ChannelAblation
from ais.ablation.naive import naive_ablation
from ais.ablation.table import ablate_batches, ablation_table

__all__ = ["DEFAULT_MEMORY_BUDGET", "PATHS", "ChannelAblation", "ablate_batches", "ablation_table", "naive_ablation"]
