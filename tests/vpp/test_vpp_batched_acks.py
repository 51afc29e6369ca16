from services.vpp.adapters.batched_events import _AckWindow


def test_acknowledges_only_the_contiguous_run_from_the_oldest_delivery():
    window = _AckWindow()
    assert window.finish(2, ack=True) is None  # 1 is still being handled
    assert window.finish(3, ack=True) is None
    assert window.finish(1, ack=True) == 3  # one frame settles 1..3
    assert window.finish(5, ack=True) is None
    assert window.finish(4, ack=False) == 5  # 4 was requeued on its own; 5 still needs its ack
    assert window.finish(6, ack=False) is None  # nothing left to acknowledge
    assert window.settled_up_to == 6 and not window.finished
