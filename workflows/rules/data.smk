# Problems: seeded game splits, AIME-2025, math prompts (pear-bench make-data), one directory per dataset.


rule make_data:
    output:
        directory("results/{grid}/data/{dataset}"),
    log:
        "logs/{grid}/make_data/{dataset}.log",
    params:
        args=lambda wc: cli_args(config["data"][wc.dataset]),
    threads: job_resource("make_data", "threads")
    resources:
        gpu=job_resource("make_data", "gpu"),
        mem_mb=job_resource("make_data", "mem_mb"),
        runtime=job_resource("make_data", "runtime"),
    shell:
        # Written to a temporary directory, then renamed: a half-written dataset never counts as done.
        "rm -rf {output}.tmp && {LAUNCH[make_data]} make-data {params.args} --out {output}.tmp > {log} 2>&1"
        " && mv {output}.tmp {output}"
