"""Ablation studies: a plan of rows × seeds, trained, evaluated and tabulated by one resumable call
(``mixedae study PLAN.yaml``). :mod:`.plan` reads plans, :mod:`.runner` runs them, :mod:`.table`
writes the tables, :mod:`.subset` builds classification subsets, :mod:`.reference` holds the paper's numbers."""

from .plan import Plan, load_plan
from .runner import run_study

__all__ = ["Plan", "load_plan", "run_study"]
