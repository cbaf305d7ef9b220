"""Rule export_onnx: the trained model as ONNX (standard and int8), checked against PyTorch on the test split."""

from ais.stages import export_onnx

export_onnx.main(snakemake)  # noqa: F821 (injected by Snakemake)
