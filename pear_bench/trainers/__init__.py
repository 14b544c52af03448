"""The two training stages of the grid, on transformers + TRL.

    sft.py          `pear-bench sft`: ``PEARSFTTrainer`` (a transformers ``Trainer`` whose one override is
                    ``compute_loss``) over pre-tokenised records with behaviour logprobs; the objective is
                    looked up by name in ``pear_bench.sft_objectives``
    grpo.py         `pear-bench rl`: TRL's ``GRPOTrainer`` with every non-vanilla default set explicitly and
                    the reward taken from ``pear_bench.grading``
    checkpoints.py  what both stages share around checkpoints: loading the starting model, resuming,
                    the run record next to every checkpoint, the final (LoRA-merged) model
"""
