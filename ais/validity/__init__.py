"""Which map to trust: faithfulness, sanity checks and the other validity measures of the maps.

One module per measure, on tensors, arrays and tables (no files):

- :mod:`~ais.validity.faithfulness`: RISE deletion / insertion curves (Petsiuk et al. 2018) of every
  map, each sign of a signed map, against a random map and the all-equal map;
- :mod:`~ais.validity.sanity`: cascading model-parameter randomisation (Adebayo et al. 2018): the map
  of the trained model against the map of a model randomised from the output down, per depth, by
  Spearman rank correlation and SSIM;
- :mod:`~ais.validity.pruning`, :mod:`~ais.validity.taylor`, :mod:`~ais.validity.saliency`
  (external-map metrics), :mod:`~ais.validity.localisation` (pointing game, relevance mass),
  :mod:`~ais.validity.sign` (what the helpfulness sign reduces to), :mod:`~ais.validity.degenerate`
  (warnings);
- :mod:`~ais.validity.measures`: those measures on the evaluated images, as summary.json's figures;
- :mod:`~ais.validity.verdict`: means with bootstrap intervals and a verdict per map from the numbers.

The ``validity`` stage (:mod:`ais.stages.validity`) reads the maps, runs these and writes
``results/validity/``; the report's section "Which map to trust" is :mod:`ais.reporting.validity`.
"""
