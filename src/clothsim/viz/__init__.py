"""Figures: result grids (query beside its top-k) and shared plotting helpers."""

from clothsim.viz.grid import QueryResult, save_result_grid

__all__ = ["QueryResult", "save_result_grid"]
