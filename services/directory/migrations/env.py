from services.directory.adapters.tables import metadata
from shared.migrations import run_environment

run_environment(metadata)
