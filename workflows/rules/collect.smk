# The SFT data: the task's teacher samples its training prompts with token logprobs; the grader keeps
# the correct responses (pear-bench collect; resumable after an interruption). Grids that sample in
# bf16 re-score the kept records in float32 (collect.rescore, pear-bench score). Then each student
# gets the records in its own chat template and token ids (pear-bench transfer), re-scored by the
# teacher where a response had to be re-tokenised.


rule collect:
    input:
        lambda wc: data_input(config["tasks"][wc.task]["train"]),
        lambda wc: model_input(config["tasks"][wc.task]["teacher"]),
        prompt_inputs(),
    output:
        # Written last, after the dataset next to it: the marker that the collection finished.
        summary="results/{grid}/sft_data/{task}/collected.summary.json",
    log:
        "logs/{grid}/collect/{task}.log",
    benchmark:
        "benchmarks/{grid}/collect/{task}.tsv"
    params:
        launch=job_launch("collect"),
        problems=lambda wc: data_file(config["tasks"][wc.task]["train"]),
        teacher=lambda wc: model_path(config["tasks"][wc.task]["teacher"]),
        settings=lambda wc: (f"--n {config['collect']['n']} --temperature {config['collect']['temperature']}"
                             f" --max-new-tokens {config['collect']['max_new_tokens']} --keep {config['collect']['keep']}"
                             f" --seed {config['collect']['seed']} {prompt_args()}"
                             f" {cli_args(config['collect'].get('args', ''))} {vllm_args('collect', wc)}"),
        output=lambda wc: collected_data(wc.task),
    threads: job_resource("collect", "threads")
    resources:
        gpu=job_resource("collect", "gpu"),
        mem_mb=job_resource("collect", "mem_mb"),
        runtime=job_resource("collect", "runtime"),
    shell:
        "{params.launch} collect --problems {params.problems:q} --model {params.teacher:q}"
        " {params.settings} --output {params.output} --overwrite > {log} 2>&1"


rule rescore:
    input:
        "results/{grid}/sft_data/{task}/collected.summary.json",
        lambda wc: model_input(config["tasks"][wc.task]["teacher"]),
    output:
        "results/{grid}/sft_data/{task}/rescored.summary.json",
    log:
        "logs/{grid}/rescore/{task}.log",
    benchmark:
        "benchmarks/{grid}/rescore/{task}.tsv"
    params:
        launch=job_launch("rescore"),
        teacher=lambda wc: model_path(config["tasks"][wc.task]["teacher"]),
        data=lambda wc: collected_data(wc.task),
        output=lambda wc: teacher_data(wc.task),
        args=lambda wc: f"{cli_args(config['collect'].get('rescore'))} {vllm_args('rescore', wc)}",
        temperature=config["collect"]["temperature"],
    threads: job_resource("rescore", "threads")
    resources:
        gpu=job_resource("rescore", "gpu"),
        mem_mb=job_resource("rescore", "mem_mb"),
        runtime=job_resource("rescore", "runtime"),
    shell:
        "{params.launch} score {params.data} --model {params.teacher:q} --temperature {params.temperature}"
        " --rescore {params.args} --output {params.output} --overwrite > {log} 2>&1"


rule transfer:
    input:
        lambda wc: summary_of(teacher_data(wc.task)),
        lambda wc: model_input(config["tasks"][wc.task]["teacher"]),
        lambda wc: model_input(wc.model),
        prompt_inputs(),
    output:
        "results/{grid}/sft_data/{task}/students/{model}.summary.json",
    log:
        "logs/{grid}/transfer/{task}/{model}.log",
    params:
        launch=job_launch("transfer"),
        teacher=lambda wc: model_path(config["tasks"][wc.task]["teacher"]),
        student=lambda wc: model_path(wc.model),
        data=lambda wc: teacher_data(wc.task),
        output=lambda wc: student_data(wc.task, wc.model),
        args=lambda wc: (f"{prompt_args()} {cli_args((config.get('transfer') or {}).get('args', ''))}"
                         f" {vllm_args('transfer', wc)}"),
    threads: job_resource("transfer", "threads")
    resources:
        gpu=job_resource("transfer", "gpu"),
        mem_mb=job_resource("transfer", "mem_mb"),
        runtime=job_resource("transfer", "runtime"),
    shell:
        "{params.launch} transfer --teacher {params.teacher:q} --student {params.student:q}"
        " --dataset {params.data} --output {params.output} {params.args} --overwrite > {log} 2>&1"
