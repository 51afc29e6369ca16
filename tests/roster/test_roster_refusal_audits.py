"""Which refused API calls get an audit row: once per kind a minute, and a bounded number in all."""
from services.roster.domain.refusal_audits import RefusalAuditBudget


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_same_refusal_is_written_once_a_window():
    clock = Clock()
    budget = RefusalAuditBudget(clock, window=60, per_window=100)
    kind = ("unknown access token", "192.0.2.7", None)
    assert budget.admit(kind)
    clock.now += 59
    assert not budget.admit(kind)
    assert budget.admit(("unknown access token", "192.0.2.8", None))  # another address is another kind
    clock.now += 1
    assert budget.admit(kind)


def test_a_flood_of_different_refusals_is_capped_per_window():
    clock = Clock()
    budget = RefusalAuditBudget(clock, window=60, per_window=3)
    admitted = [budget.admit(("unknown access token", f"192.0.2.{n}", None)) for n in range(10)]
    assert admitted == [True] * 3 + [False] * 7
    clock.now += 60
    assert budget.admit(("unknown access token", "192.0.2.200", None))


def test_what_it_remembers_stays_bounded_by_the_window():
    clock = Clock()
    budget = RefusalAuditBudget(clock, window=60, per_window=1_000_000)
    for n in range(5000):
        clock.now += 0.1
        budget.admit(("unknown access token", f"address {n}", None))
    assert len(budget._last_written) <= 601
