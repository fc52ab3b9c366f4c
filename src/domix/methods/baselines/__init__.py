"""The baselines that pre-train one model over all the domains: ncl_lora, joint_lora, ncl_full."""
