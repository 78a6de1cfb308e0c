"""Simulator settings (env RIVULET_SIM_*)."""

from __future__ import annotations

from shared.config import RivuletSettings


class SimulatorSettings(RivuletSettings):
    serving_url: str = "http://127.0.0.1:8000"
    sim_cards: int = 1000
    sim_seed: int = 7
    sim_rate: float = 150.0            # transactions (events + predictions) per real second
    sim_warmup_hours: float = 26.0     # virtual history produced before predictions start
    sim_start_days_ago: float = 30.0   # the virtual clock starts this far in the past
    sim_label_delay_s: float = 3.0     # real seconds between a prediction and its label
    sim_shift_after: int = 6000        # predictions before the covariate shift + concept change (0: never)
    sim_duration_s: float = 0.0        # stop after this many seconds of live traffic (0: run until stopped)
    sim_max_predictions: int = 0       # stop after this many predictions (0: no limit)
    sim_concurrency: int = 32          # /predict calls in flight
