# The SFT data: the task's teacher samples its training prompts with token logprobs; the grader keeps
# the correct responses (pear-bench collect; resumable after an interruption).


rule collect:
    input:
        lambda wc: data_input(config["tasks"][wc.task]["train"]),
        lambda wc: model_input(config["tasks"][wc.task]["teacher"]),
    output:
        # Written last, after the dataset next to it: the marker that the collection finished.
        summary="results/{grid}/sft_data/{task}.summary.json",
    log:
        "logs/{grid}/collect/{task}.log",
    benchmark:
        "benchmarks/{grid}/collect/{task}.tsv"
    params:
        problems=lambda wc: data_file(config["tasks"][wc.task]["train"]),
        teacher=lambda wc: model_path(config["tasks"][wc.task]["teacher"]),
        settings=lambda wc: (f"--n {config['collect']['n']} --temperature {config['collect']['temperature']}"
                             f" --max-new-tokens {config['collect']['max_new_tokens']} --keep {config['collect']['keep']}"
                             f" --seed {config['collect']['seed']} {cli_args(config['collect'].get('args', ''))}"),
    threads: RESOURCES["collect"]["threads"]
    resources:
        gpu=RESOURCES["collect"]["gpu"],
        mem_mb=RESOURCES["collect"]["mem_mb"],
        runtime=RESOURCES["collect"]["runtime"],
    shell:
        "{LAUNCH[collect]} collect --problems {params.problems:q} --model {params.teacher:q}"
        " {params.settings} --output results/{wildcards.grid}/sft_data/{wildcards.task}.parquet --overwrite > {log} 2>&1"
