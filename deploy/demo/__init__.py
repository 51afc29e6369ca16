"""``make demo``: Orchard's whole story against the Apple sandbox, told with the ``orchard`` command."""
