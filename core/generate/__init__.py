"""Generation: a run as a tick-driven state machine (run.py), the per-shot engine steps (shot.py),
Generate All's shared polling (all_shots.py), and the main-thread ends of a shot: scene -> ShotJob
and TakeOutcome -> strips (shot_job.py). The step request -> engine job -> frames of the data flow."""
