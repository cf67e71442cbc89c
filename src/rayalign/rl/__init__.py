"""Online alignment: rollouts, rewards and policy-gradient training (GRPO)."""
