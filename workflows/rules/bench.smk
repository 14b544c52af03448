# Benchmarks of the training step (`snakemake --cores all bench`), recorded with the grid's results.


rule bench:
    input:
        f"{RESULTS}/bench/step.txt",


rule bench_step:
    output:
        table="results/{grid}/bench/step.txt",
        json="results/{grid}/bench/step.json",
    log:
        "logs/{grid}/bench_step.log",
    params:
        args=lambda wc: cli_args(config["bench"]["step_args"]),
    threads: workflow.cores
    shell:
        "{PEAR_BENCH} bench step {params.args} --json {output.json}.tmp > {output.table}.tmp 2> {log}"
        " && mv {output.json}.tmp {output.json} && mv {output.table}.tmp {output.table}"
