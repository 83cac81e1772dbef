"""Attacks: FGSM in pixel space and the objectives it follows."""

from pytest_adrobust.attacks.fgsm import ATTACKS, SurrogateHead, check_eps, fgsm, random_sign, score_attack_loss

__all__ = ["ATTACKS", "SurrogateHead", "check_eps", "fgsm", "random_sign", "score_attack_loss"]
