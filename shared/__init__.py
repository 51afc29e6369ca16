"""Orchard's shared kernel: contracts, storage, metrics, auth, scheduling.

Everything here is generic. Domain code lives in each service; services share
only what is in this package and talk only over RabbitMQ.
"""
