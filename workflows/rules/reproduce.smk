# The run's results against the grid's committed reference, cell by cell (pear-bench compare): the
# verdict is printed at the end of the run and kept in results/{grid}/reproducibility.md. The rule
# never fails on a difference (the grid's results are still good results); `pear-bench compare`
# run by hand exits 1 then.


def _reference_inputs(wc):
    return [os.path.join(REFERENCE, name) for name in ("metrics.csv", "metrics_ci.csv")
            if os.path.exists(os.path.join(REFERENCE, name))]


rule reproduce:
    input:
        csv="results/{grid}/metrics.csv",
        ci="results/{grid}/metrics_ci.csv",
        main="results/{grid}/tables/main.md",
        reference=_reference_inputs,
    output:
        md="results/{grid}/reproducibility.md",
        json="results/{grid}/reproducibility.json",
        platform="results/{grid}/platform.json",
    log:
        "logs/{grid}/reproduce.log",
    params:
        reference=lambda wc: shlex.quote(REFERENCE),
        tolerance=config.get("reference_tolerance", 0),
    threads: job_resource("reproduce", "threads")
    resources:
        gpu=job_resource("reproduce", "gpu"),
        mem_mb=job_resource("reproduce", "mem_mb"),
        runtime=job_resource("reproduce", "runtime"),
    shell:
        # tee: the verdict goes to the terminal as well as to the log.
        "{LAUNCH[reproduce]} compare --run results/{wildcards.grid} --reference {params.reference}"
        " --tolerance {params.tolerance} --exit-zero 2>&1 | tee {log}"
