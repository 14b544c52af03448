# GRPO: the same rl: recipe from every SFT checkpoint, once per RL seed (pear-bench rl).
# Done marker, resume and reruns as in sft.smk.


rule rl:
    input:
        "results/{grid}/sft/{model}/{task}/{arm}/run_config.json",
        lambda wc: data_input(config["tasks"][wc.task]["train"]),
        prompt_inputs(),
    output:
        "results/{grid}/rl/{model}/{task}/{arm}/seed{seed}/run_config.json",
    log:
        "logs/{grid}/rl/{model}/{task}/{arm}/seed{seed}.log",
    benchmark:
        "benchmarks/{grid}/rl/{model}/{task}/{arm}/seed{seed}.tsv"
    params:
        launch=job_launch("rl"),
        settings=lambda wc: cli_flags(rl_settings(wc)),
    threads: job_resource("rl", "threads")
    resources:
        gpu=job_resource("rl", "gpu"),
        mem_mb=job_resource("rl", "mem_mb"),
        runtime=job_resource("rl", "runtime"),
    shell:
        "{params.launch} rl {params.settings} > {log} 2>&1"
