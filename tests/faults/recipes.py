"""The recipes the fault sweep kills, at test size: two stages of 2 steps, a checkpoint every step and
only one kept (so that every save also rotates), full-length answers on 2 test images (boxes parse,
so the compared metrics mean something)."""

COMMON = ["--max-steps", "2", "--set", "data.num_train=4", "--set", "data.num_test=2",
          "--set", "train.per_device_train_batch_size=2", "--set", "train.save_steps=1",
          "--set", "train.save_total_limit=1", "--no-wandb"]

TEST_SIZE = {
    "r3-two-stage": ["--recipe", "r3-two-stage", *COMMON],
    # GRPO: 1 prompt x 2 answers of at most 24 tokens a step; no shifted split
    "r5-sft-grpo": ["--recipe", "r5-sft-grpo", *COMMON, "--set", "data.num_shifted=0",
                    "--set", "stages.1.objective.options.num_generations=2",
                    "--set", "stages.1.objective.options.prompts_per_step=1",
                    "--set", "stages.1.objective.options.max_completion_length=24"],
}
