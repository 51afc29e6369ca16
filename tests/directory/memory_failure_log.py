"""An in-memory ``FailureLog`` for the limiter's unit tests."""


class MemoryFailureLog:
    def __init__(self):
        self.times: dict[str, list[float]] = {}

    def hold(self, key):
        pass  # one process, one thread: nothing runs between check and record

    def failures_since(self, key, since):
        return [at for at in self.times.get(key, []) if at > since]

    def add(self, key, at, forget_before):
        self.times.setdefault(key, []).append(at)

    def clear(self, key):
        self.times.pop(key, None)
