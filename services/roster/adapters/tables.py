"""The roster service's tables, in its own database."""
import sqlalchemy as sa

from shared.storage import add_kernel_tables

metadata = sa.MetaData()
add_kernel_tables(metadata)
