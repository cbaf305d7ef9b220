# tests/test_slurm.py: a job that fails on its first attempt, to see what SLURM was asked
# for on the retry with profiles/slurm (runtime and mem_mb grow with `attempt`).


rule all:
    input:
        "retry/granted.txt",
    default_target: True


rule fail_once:
    output:
        "retry/granted.txt",
    log:
        "retry/fail_once.log",
    shell:
        """
        granted=$(squeue -h -j "$SLURM_JOB_ID" -o "slurm_mem=%m slurm_limit=%l")
        echo "job=$SLURM_JOB_ID mem_mb={resources.mem_mb} runtime={resources.runtime} $granted" >> retry/attempts.txt  # not a declared log: Snakemake empties those per attempt
        if [ ! -e retry/first-attempt-failed ]; then touch retry/first-attempt-failed; exit 1; fi
        echo "mem_mb={resources.mem_mb} runtime={resources.runtime} $granted" > {output}
        """
