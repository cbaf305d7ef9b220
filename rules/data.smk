rule make_demo:
    output:
        sheet=f"{R}/demo/sheet.csv",
        images=directory(f"{R}/demo/images"),
        masks=directory(f"{R}/demo/masks"),
    log:
        f"{LOGS}/demo/sheet.log",
    params:
        demo=config["demo"],
    conda:
        "../envs/ais.yaml"
    script:
        "../workflow_scripts/make_demo.py"


rule intake_sheet:
    input:
        sheet=get_sheet(),
    output:
        manifest=f"{R}/data/manifest.parquet",
        rejected=f"{R}/data/rejected.csv",
    log:
        f"{LOGS}/data/manifest.log",
    params:
        data=config["data"],
        seed=config["seed"],
        demo=config["data"]["source"] == "demo",
    conda:
        "../envs/ais.yaml"
    script:
        "../workflow_scripts/intake_sheet.py"
