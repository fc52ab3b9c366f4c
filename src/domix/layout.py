"""The files every run folder has, by name: what the engine writes and what a store or a comparison reads back."""

RUN_FILE = "run.json"  # a run's status and settings: running or finished (every command)
MODEL_DIR = "model"  # where a task run (finetune, instruct) writes its model, inside its out folder
RESULT_FILE = "result.json"  # a finished task run's record: scores, trainable share, memory, time (finetune, instruct)
