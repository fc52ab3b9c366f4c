"""What the baselines write: each one's folder inside the store, and whether that is a whole model (not a LoRA
module). The trainer writes them; the registry's entries tell fine-tuning where to start."""

OUTPUTS = {"ncl_lora": "ncl", "joint_lora": "joint", "ncl_full": "ncl-full"}
WHOLE_MODELS = {"ncl_full"}
