# The trained model for use outside the workflow: ONNX (standard and dynamic int8), checked on the test split.
# No config section: the export's settings are fixed here and reach the job through params.
ONNX_EXPORT = {"opset": 18, "split": "test", "batch_size": 32, "tolerance": 1e-4}


rule export_onnx:
    input:
        manifest=f"{R}/data/manifest.parquet",
        weights=f"{R}/model/model.safetensors",
        spec=f"{R}/model/model.json",
    output:
        onnx=f"{R}/model/model.onnx",
        int8=f"{R}/model/model.int8.onnx",
        summary=f"{R}/model/onnx.json",
    log:
        f"{LOGS}/export/export_onnx.log",
    benchmark:
        f"{BENCH}/export/export_onnx.tsv"
    params:
        export=ONNX_EXPORT,
        seed=config["seed"],
    threads: 1
    conda:
        "../envs/ais.yaml"
    script:
        "../workflow_scripts/export_onnx.py"
