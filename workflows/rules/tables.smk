# The grid's results: metrics.csv (long format), tables in the paper's layout, plots (pear-bench tables).


rule tables:
    input:
        metrics=all_metrics(),
        sft_runs=[f"{run.split('=', 1)[1]}/run_config.json" for run in all_sft_runs()],
    output:
        csv="results/{grid}/metrics.csv",
        ci="results/{grid}/metrics_ci.csv",
        main=report("results/{grid}/tables/main.md", caption="../report/tables.rst", category="Tables"),
        main_tex="results/{grid}/tables/main.tex",
        per_task=expand("results/{{grid}}/tables/{task}.{ext}", task=list(config["tasks"]), ext=["md", "tex"]),
        sft_vs_rl=report(expand("results/{{grid}}/plots/sft_vs_rl_{task}.png", task=list(config["tasks"])),
                         caption="../report/sft_vs_rl.rst", category="Plots"),
        weights=report("results/{grid}/plots/weights_diagnostics.png", caption="../report/weights.rst",
                       category="Plots"),
    log:
        "logs/{grid}/tables.log",
    params:
        sft_runs=" ".join(all_sft_runs()),
        methods=" ".join(ARMS),
        show=" ".join(f"pass@{k}" for k in config["evaluation"]["ks"]),
    threads: job_resource("tables", "threads")
    resources:
        gpu=job_resource("tables", "gpu"),
        mem_mb=job_resource("tables", "mem_mb"),
        runtime=job_resource("tables", "runtime"),
    shell:
        "{LAUNCH[tables]} tables --metrics {input.metrics} --sft-runs {params.sft_runs}"
        " --method-order {params.methods} --show {params.show} --out results/{wildcards.grid} > {log} 2>&1"
