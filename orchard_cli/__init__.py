"""The ``orchard`` command: talks to the services over RabbitMQ RPC."""
