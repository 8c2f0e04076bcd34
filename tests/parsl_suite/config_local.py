"""Config for Parsl's own test suite: packmule's WorkQueueExecutor, local workers.

Used as ``pytest <site-packages>/parsl/tests --config tests/parsl_suite/config_local.py``.
"""

from parsl.config import Config
from parsl.providers import LocalProvider

from packmule import WorkQueueExecutor


def fresh_config() -> Config:
    return Config(
        executors=[
            WorkQueueExecutor(
                provider=LocalProvider(init_blocks=1, max_blocks=1),
                worker_options="--cores 2 --memory 4000 --disk 4000",
            )
        ],
        strategy_period=0.5,
    )
