# Evaluation: k samples per problem from every base, SFT and GRPO checkpoint, graded (pear-bench eval).
# {checkpoint} is base, sft/<arm> or rl/<arm>/seed<seed>; the labels say which in metrics.json.


def _eval_inputs(wc):
    marker = checkpoint_of(wc)[1]
    return [data_input(config["tasks"][wc.task]["eval"]), *prompt_inputs()] + ([marker] if marker else [])


rule evaluate:
    input:
        _eval_inputs,
    output:
        # samples.jsonl is written first, metrics.json last: the job's done marker.
        "results/{grid}/eval/{task}/{model}/{checkpoint}/metrics.json",
    log:
        "logs/{grid}/eval/{task}/{model}/{checkpoint}.log",
    benchmark:
        "benchmarks/{grid}/eval/{task}/{model}/{checkpoint}.tsv"
    params:
        launch=job_launch("evaluate"),
        model=lambda wc: checkpoint_of(wc)[0],
        problems=lambda wc: data_file(config["tasks"][wc.task]["eval"]),
        labels=eval_labels,
        settings=lambda wc: (f"--samples {config['evaluation']['samples']} --ks {' '.join(map(str, config['evaluation']['ks']))}"
                  f" --temperature {config['evaluation']['temperature']}"
                  f" --max-new-tokens {config['evaluation']['max_new_tokens']} --seed {config['evaluation']['seed']}"
                  f" {prompt_args()}"
                  f" {cli_args(config['evaluation'].get('args', ''))} {vllm_args('evaluate', wc)}"),
        out=lambda wc, output: os.path.dirname(output[0]),
    threads: job_resource("evaluate", "threads")
    resources:
        gpu=job_resource("evaluate", "gpu"),
        mem_mb=job_resource("evaluate", "mem_mb"),
        runtime=job_resource("evaluate", "runtime"),
    shell:
        "{params.launch} eval --model {params.model:q} --problems {params.problems:q} {params.settings}"
        " {params.labels} --output {params.out} --overwrite > {log} 2>&1"
