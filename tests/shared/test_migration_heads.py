"""Each service's migrations form one line (beside the kernel's shared branch): a second head would stop
``python -m shared.migrations revision`` from writing the next migration."""
import pytest
from alembic.script import ScriptDirectory

from shared.migrations import _services_with_migrations, alembic_config


@pytest.mark.parametrize("service", _services_with_migrations())
def test_the_service_branch_has_one_head(service):
    script = ScriptDirectory.from_config(alembic_config(f"services.{service}.migrations"))
    (head,) = script.get_revisions(f"{service}@head")  # Alembic refuses when the branch has several
    assert head is not None
