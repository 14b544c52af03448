# Problems: seeded game splits, AIME-2025, math prompts (pear-bench make-data), one directory per dataset.
# Hub datasets are fetched once, at a pinned revision (hub_datasets:); make-data reads the snapshots offline.


rule snapshot_dataset:
    output:
        directory("results/{grid}/hub_datasets/{name}"),
    log:
        "logs/{grid}/snapshot/dataset-{name}.log",
    params:
        repo=lambda wc: hub_source(config["hub_datasets"][wc.name])[0],
        revision=lambda wc: hub_source(config["hub_datasets"][wc.name])[1],
    threads: job_resource("snapshot_dataset", "threads")
    resources:
        gpu=job_resource("snapshot_dataset", "gpu"),
        mem_mb=job_resource("snapshot_dataset", "mem_mb"),
        runtime=job_resource("snapshot_dataset", "runtime"),
    shell:
        "{LAUNCH[snapshot_dataset]} snapshot dataset --repo {params.repo:q} --revision {params.revision:q}"
        " --out {output} > {log} 2>&1"


rule make_data:
    input:
        lambda wc: make_data_inputs(wc.dataset),
    output:
        directory("results/{grid}/data/{dataset}"),
    log:
        "logs/{grid}/make_data/{dataset}.log",
    params:
        args=lambda wc: make_data_args(wc.dataset),
    threads: job_resource("make_data", "threads")
    resources:
        gpu=job_resource("make_data", "gpu"),
        mem_mb=job_resource("make_data", "mem_mb"),
        runtime=job_resource("make_data", "runtime"),
    shell:
        # Written to a temporary directory, then renamed: a half-written dataset never counts as done.
        "rm -rf {output}.tmp && {LAUNCH[make_data]} make-data {params.args} --out {output}.tmp > {log} 2>&1"
        " && mv {output}.tmp {output}"
