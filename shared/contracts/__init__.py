"""Contracts between Orchard's services: event payloads and the records they exchange.

A publisher and its subscribers import the same class, so they cannot drift.
Evolve a contract additively (new optional fields); a breaking change gets a new
event type, published beside the old one while subscribers move over.
"""
