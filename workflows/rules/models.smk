# Models a grid builds: trained from scratch (the CPU miniature: one shared tokenizer, then each model),
# fine-tuned in the solver's style from another model (init:), converted from a GGUF file shipped
# in a Python package (convert:, the SmolLM2 grid), or fetched from the hub once, at a pinned revision
# (a hub id or {hub:, revision:}), so that every job using it reads a local directory offline.


rule snapshot_model:
    output:
        directory("results/{grid}/models/{model}"),
    wildcard_constraints:
        model=built_models("hub"),
    log:
        "logs/{grid}/snapshot/{model}.log",
    params:
        repo=lambda wc: hub_source(config["models"][wc.model])[0],
        revision=lambda wc: hub_source(config["models"][wc.model])[1],
    threads: job_resource("snapshot_model", "threads")
    resources:
        gpu=job_resource("snapshot_model", "gpu"),
        mem_mb=job_resource("snapshot_model", "mem_mb"),
        runtime=job_resource("snapshot_model", "runtime"),
    shell:
        "{LAUNCH[snapshot_model]} snapshot model --repo {params.repo:q} --revision {params.revision:q}"
        " --out {output} > {log} 2>&1"


rule bootstrap_tokenizer:
    input:
        bootstrap_inputs(),
    output:
        directory("results/{grid}/models/tokenizer"),
    log:
        "logs/{grid}/bootstrap/tokenizer.log",
    params:
        args=cli_args(config.get("bootstrap", {}).get("tokenizer", "")),
    threads: job_resource("bootstrap_tokenizer", "threads")
    resources:
        gpu=job_resource("bootstrap_tokenizer", "gpu"),
        mem_mb=job_resource("bootstrap_tokenizer", "mem_mb"),
        runtime=job_resource("bootstrap_tokenizer", "runtime"),
    shell:
        "{LAUNCH[bootstrap_tokenizer]} bootstrap tokenizer {params.args} --out {output} > {log} 2>&1"


rule bootstrap_model:
    input:
        bootstrap_inputs(),
        unpack(lambda wc: bootstrap_model_inputs(wc.model)),
        prompt_inputs(),
    output:
        directory("results/{grid}/models/{model}"),
    wildcard_constraints:
        model=built_models("bootstrap"),
    log:
        "logs/{grid}/bootstrap/{model}.log",
    benchmark:
        "benchmarks/{grid}/bootstrap/{model}.tsv"
    params:
        start=lambda wc: bootstrap_start(wc.model),
        args=lambda wc: f"{cli_args(config['models'][wc.model]['bootstrap'])} {prompt_args()}",
    threads: job_resource("bootstrap_model", "threads")
    resources:
        gpu=job_resource("bootstrap_model", "gpu"),
        mem_mb=job_resource("bootstrap_model", "mem_mb"),
        runtime=job_resource("bootstrap_model", "runtime"),
    shell:
        "{LAUNCH[bootstrap_model]} bootstrap model {params.start} {params.args}"
        " --out {output} > {log} 2>&1"


rule convert_model:
    output:
        directory("results/{grid}/models/{model}"),
    wildcard_constraints:
        model=built_models("convert"),
    log:
        "logs/{grid}/convert/{model}.log",
    params:
        args=lambda wc: cli_args(config["models"][wc.model]["convert"]),
    threads: job_resource("convert_model", "threads")
    resources:
        gpu=job_resource("convert_model", "gpu"),
        mem_mb=job_resource("convert_model", "mem_mb"),
        runtime=job_resource("convert_model", "runtime"),
    shell:
        "{LAUNCH[convert_model]} convert {params.args} --out {output} > {log} 2>&1"


ruleorder: bootstrap_tokenizer > bootstrap_model
