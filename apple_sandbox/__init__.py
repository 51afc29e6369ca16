"""The Apple sandbox: real HTTP servers that behave like Apple's services.

Orchard's tests and demo talk to these over real sockets, exactly as they would
talk to Apple: the Device Assignment (DEP) and roster API, Apps and Books v2,
and APNs over HTTP/2 with TLS client certificates. Each fake lives in its own
module; ``python -m apple_sandbox`` runs them all.
"""
