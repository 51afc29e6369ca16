from shared.migrations import run_environment
from tests.shared.sample.services import metadata

run_environment(metadata)
