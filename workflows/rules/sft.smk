# SFT: each student x task x arm (method), on the task's teacher data (pear-bench sft).
# The job's settings are its params, so changing one arm's settings reruns that arm and what follows
# from it only. The trainer writes run_config.json last, after the model: the job's done marker.
# Checkpoints stay in the run directory, so a killed job resumes from its newest checkpoint; if the
# settings changed in between, resume: auto-restart sets the old checkpoints aside and starts over.


rule sft:
    input:
        lambda wc: summary_of(student_data(wc.task, wc.model)),
        lambda wc: model_input(wc.model),
    output:
        "results/{grid}/sft/{model}/{task}/{arm}/run_config.json",
    log:
        "logs/{grid}/sft/{model}/{task}/{arm}.log",
    benchmark:
        "benchmarks/{grid}/sft/{model}/{task}/{arm}.tsv"
    params:
        launch=job_launch("sft"),
        settings=lambda wc: cli_flags(sft_settings(wc)),
    threads: job_resource("sft", "threads")
    resources:
        gpu=job_resource("sft", "gpu"),
        mem_mb=job_resource("sft", "mem_mb"),
        runtime=job_resource("sft", "runtime"),
    shell:
        "{params.launch} sft {params.settings} > {log} 2>&1"
