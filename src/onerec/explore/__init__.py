"""Exploration for new items: AGE (adversarial gradient driven exploration, arXiv 2112.11136) on the DIN baseline
of :mod:`onerec.reward`, the classic bandit policies beside it, and their unbiased offline replay on a simulated
random-exposure log.

* :mod:`onerec.explore.age` -- the AGE terms: pseudo-exploration (FGM, PGD), MC-dropout uncertainty (UCB-style
  spread, Thompson-style single mask), dynamic gating;
* :mod:`onerec.explore.model` -- the CTR model with MC-dropout towers and the gate's item-only model;
* :mod:`onerec.explore.policies` -- random, greedy, epsilon-greedy, UCB, Thompson, AGE-UCB, AGE-TS in one harness;
* :mod:`onerec.explore.replay` -- the random-exposure log, the replay, ``onerec explore RUN``;
* :mod:`onerec.explore.online` -- the online days in the simulated world, new videos arriving daily, the serving
  cascade retrained on its own exposures.
"""

from onerec.explore.online import check_online, run_online
from onerec.explore.policies import POLICIES, score_candidates
from onerec.explore.replay import ReplayLog, check_explore, replay_log, replay_policy, run_replay, stage_explore

__all__ = ["POLICIES", "ReplayLog", "check_explore", "check_online", "replay_log", "replay_policy", "run_online",
           "run_replay", "score_candidates", "stage_explore"]
