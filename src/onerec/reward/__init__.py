"""The reward system: the P-Score ranking model (SIM + CAN, towers, fusion), the rule rewards and OneRec-V2's
duration-aware shaping of real feedback."""

from onerec.reward.duration import DurationShaping
from onerec.reward.rewards import CodeIndex, format_reward, group_advantages, industrial_reward

__all__ = ["CodeIndex", "DurationShaping", "format_reward", "group_advantages", "industrial_reward"]
