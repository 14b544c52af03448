# Models trained from scratch for grids that bootstrap them (the CPU miniature): one shared tokenizer,
# then each model (pear_bench.miniature). Grids of hub models have no jobs here.


rule bootstrap_tokenizer:
    input:
        bootstrap_inputs(),
    output:
        directory("results/{grid}/models/tokenizer"),
    log:
        "logs/{grid}/bootstrap/tokenizer.log",
    params:
        args=cli_args(config.get("bootstrap", {}).get("tokenizer", "")),
    threads: RESOURCES["bootstrap_tokenizer"]["threads"]
    resources:
        gpu=RESOURCES["bootstrap_tokenizer"]["gpu"],
        mem_mb=RESOURCES["bootstrap_tokenizer"]["mem_mb"],
        runtime=RESOURCES["bootstrap_tokenizer"]["runtime"],
    shell:
        "{LAUNCH[bootstrap_tokenizer]} bootstrap tokenizer {params.args} --out {output} > {log} 2>&1"


rule bootstrap_model:
    input:
        bootstrap_inputs(),
        tokenizer="results/{grid}/models/tokenizer",
    output:
        directory("results/{grid}/models/{model}"),
    log:
        "logs/{grid}/bootstrap/{model}.log",
    benchmark:
        "benchmarks/{grid}/bootstrap/{model}.tsv"
    params:
        args=lambda wc: cli_args(config["models"][wc.model]["bootstrap"]),
    threads: RESOURCES["bootstrap_model"]["threads"]
    resources:
        gpu=RESOURCES["bootstrap_model"]["gpu"],
        mem_mb=RESOURCES["bootstrap_model"]["mem_mb"],
        runtime=RESOURCES["bootstrap_model"]["runtime"],
    shell:
        "{LAUNCH[bootstrap_model]} bootstrap model --tokenizer {input.tokenizer} {params.args}"
        " --out {output} > {log} 2>&1"


ruleorder: bootstrap_tokenizer > bootstrap_model
