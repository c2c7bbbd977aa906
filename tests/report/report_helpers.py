"""A small hand-made campaign store shared by the report tests."""

TASKS = ["alpha", "beta"]
# (generation, weights, estimates); generation None: calibration, measured on every item
EVALUATIONS = [
    (None, (0.0, 0.0), {"alpha": 0.2, "beta": 0.3}),
    (1, (1.0, 0.0), {"alpha": 0.6, "beta": 0.1}),
    (1, (0.5, 0.5), {"alpha": 0.4, "beta": 0.4}),
    (2, (0.2, 0.9), {"alpha": 0.1, "beta": 0.7}),
]
