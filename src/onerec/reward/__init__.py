"""The reward system: the P-Score ranking model (SIM + CAN, towers, fusion) and the rule rewards."""

from onerec.reward.rewards import CodeIndex, format_reward, group_advantages, industrial_reward

__all__ = ["CodeIndex", "format_reward", "group_advantages", "industrial_reward"]
