"""AIS: ablation-based image-realism saliency.

All logic of the workflow lives in this package, one purpose per module:

- :mod:`ais.config`     configuration loading and validation (JSON Schema)
- :mod:`ais.io`         atomic file writes, Parquet tables with metadata
- :mod:`ais.provenance` config, library versions and git revision for outputs
- :mod:`ais.data`       image-sheet intake and the manifest
- :mod:`ais.demo`       the offline synthetic realism data set
- :mod:`ais.images`     image loading and preprocessing
"""

__version__ = "0.1.0"
